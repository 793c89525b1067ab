/* Live refresh of the order tracker page (templates/orders/tracker.html).
 *
 * Every 2 seconds, while the order is not final, it reads the order and its
 * timeline from the JSON API and updates the page in place: the status, the
 * milestones, the details, the timeline and which actions are offered. The
 * action forms are never re-rendered, so nothing an operator is typing is lost.
 * The banner an action left ("The order is approved.") is hidden once the status
 * moves on from the one it was shown with: it told what had just happened, no more.
 * Once the operator is signed out (a 401, say from another tab) it stops and
 * says so, with a link to sign in, rather than showing what it can no longer update.
 * Without JavaScript the page is complete as served; a Refresh link updates it.
 */
(function () {
  "use strict";

  var POLL_MS = 2000;
  // Until the worker has recorded the order (just placed: its total not priced yet), look again
  // sooner, a few times: the first record comes within a second when a worker runs.
  var QUICK_POLL_MS = 300;
  var quickPollsLeft = 10;

  function nextPoll(source) {
    if (source !== "store" && quickPollsLeft > 0) {
      quickPollsLeft -= 1;
      return QUICK_POLL_MS;
    }
    return POLL_MS;
  }
  var root = document.getElementById("order-tracker");
  if (!root || !window.fetch) {
    return;
  }
  var labels = JSON.parse(document.getElementById("order-labels").textContent);
  var names = JSON.parse(document.getElementById("order-names").textContent);
  var cents = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  var dollars = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 0 });

  // As the server's money macro (templates/macros.html): "$1,249", "$39.50".
  function money(value) {
    return (Number.isInteger(value) ? dollars : cents).format(value);
  }

  // As the server's when macros: to the minute, or to the second (a review deadline minutes away,
  // the milestones and the timeline, whose steps are seconds apart).
  function when(iso, seconds) {
    if (!iso) {
      return "–";
    }
    var utc = /(\+00:00|Z)$/.test(iso) ? " UTC" : "";
    return iso.slice(0, seconds ? 19 : 16).replace("T", " ") + utc;
  }

  function words(text) {
    return String(text).replace(/_/g, " ");
  }

  // As the tracker's step_text macro: the step by its name; a stopped order says where.
  function stepText(order) {
    var name = names.steps[order.step] || words(order.step);
    return order.final && order.status !== "completed" ? "Stopped at " + name.toLowerCase() : name;
  }

  function attemptsText(count) {
    return count ? count + (count === 1 ? " attempt" : " attempts") : "";
  }

  var FORMATS = {
    money: money,
    when: function (iso) { return when(iso, false); },
    seconds: function (iso) { return when(iso, true); },
    yesno: function (value) { return value ? "Yes" : "No"; },
    words: words,
  };

  function lookup(order, path) {
    return path.split(".").reduce(function (value, key) {
      return value === null || value === undefined ? undefined : value[key];
    }, order);
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function replaceItems(list, items, render, emptyText) {
    list.textContent = "";
    if (!items.length) {
      list.appendChild(element("li", "muted", emptyText));
    }
    items.forEach(function (item) {
      list.appendChild(render(item));
    });
  }

  function showStatus(order) {
    var badge = document.getElementById("order-status");
    badge.className = "badge badge-order-" + order.status;
    badge.textContent = labels[order.status] || words(order.status);
    var reason = document.getElementById("order-reason");
    reason.textContent = order.reason || "";
    reason.hidden = !order.reason;
    document.getElementById("order-waiting").hidden = order.source !== "start";
  }

  function showBanner(order) {
    var banner = root.querySelector("#notice.banner-success");
    if (banner && order.status !== root.dataset.status) {
      banner.hidden = true;
    }
  }

  function showFields(order) {
    document.getElementById("order-step").textContent = stepText(order);
    root.querySelectorAll("[data-field]").forEach(function (node) {
      var value = lookup(order, node.dataset.field);
      var format = FORMATS[node.dataset.format];
      node.textContent = value === null || value === undefined || value === "" ? "–" : format ? format(value) : value;
    });
  }

  function showMilestones(order) {
    var open = true;
    document.querySelectorAll("#order-milestones [data-milestone]").forEach(function (item) {
      var name = item.dataset.milestone;
      var reachedAt = order.milestones[name];
      var state = "ahead";
      if (reachedAt) {
        state = "reached";
      } else if (open) {
        state = !order.final ? "current" : order.status !== "completed" ? "stopped" : "ahead";
        open = false;
      }
      item.className = "milestone milestone-" + state;
      if (state === "current") {
        item.setAttribute("aria-current", "step");
      } else {
        item.removeAttribute("aria-current");
      }
      item.querySelector(".milestone-time").textContent = reachedAt ? when(reachedAt, true) : "";
      item.querySelector(".milestone-attempts").textContent = attemptsText(order.attempts[item.dataset.attemptsStep]);
    });
  }

  function showLines(order) {
    var body = document.getElementById("order-lines");
    body.textContent = "";
    if (!order.lines.length) {
      var row = element("tr");
      var cell = element("td", "muted", "Priced once the order is validated.");
      cell.colSpan = 2;
      row.appendChild(cell);
      body.appendChild(row);
    }
    order.lines.forEach(function (line) {
      var row = element("tr");
      var name = element("th", null, line.quantity + " × " + line.name + " ");
      name.scope = "row";
      name.appendChild(element("span", "muted", line.sku));
      row.appendChild(name);
      row.appendChild(element("td", "num", money(line.line_total)));
      body.appendChild(row);
    });
  }

  function showLists(order) {
    // In the process's order, by name (as the page renders them); unnamed steps last.
    var known = names.attempt_order;
    var steps = known.filter(function (step) { return step in order.attempts; }).concat(
      Object.keys(order.attempts).filter(function (step) { return known.indexOf(step) < 0; }));
    var attempts = steps.map(function (step) {
      return (names.attempts[step] || words(step)) + ": " + attemptsText(order.attempts[step]);
    });
    replaceItems(document.getElementById("order-attempts"), attempts, function (text) {
      return element("li", null, text);
    }, "No step has finished yet.");
    replaceItems(document.getElementById("order-compensations"), order.compensations, function (text) {
      return element("li", null, text);
    }, "Nothing was undone.");
    // As the server renders them (templates/orders/tracker.html): "shipped: refused (550 ...)".
    var emailList = document.getElementById("order-emails");
    var sent = order.emails || {};
    var emails = emailList.dataset.kinds.split(" ").filter(function (kind) {
      return kind in sent;
    }).map(function (kind) {
      var email = sent[kind];
      return words(kind) + ": " + words(email.status) + (email.reason ? " (" + email.reason + ")" : "");
    });
    replaceItems(emailList, emails, function (text) {
      return element("li", null, text);
    }, emailList.dataset.none);
  }

  function showActions(order) {
    root.querySelectorAll("[data-action]").forEach(function (node) {
      node.hidden = order.actions.indexOf(node.dataset.action) === -1;
    });
    document.getElementById("no-actions").hidden = order.actions.length > 0;
    // The review's deadline is recorded with the review, often after the page was served.
    document.getElementById("order-review-by").hidden = !order.review_deadline;
  }

  function showEvents(events) {
    replaceItems(document.getElementById("order-timeline"), events, function (event) {
      var item = element("li", "event event-" + event.kind);
      var time = element("time", null, when(event.at, true));
      time.dateTime = event.at;
      item.appendChild(time);
      item.appendChild(document.createTextNode(" "));
      item.appendChild(element("span", "event-kind", event.kind));
      item.appendChild(document.createTextNode(" "));
      item.appendChild(element("span", "event-message", event.message));  // a failed attempt's line names it
      return item;
    }, "No events yet.");
  }

  function getJson(url) {
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (response) {
      if (response.status === 401) {
        var signedOut = new Error(url + ": signed out");
        signedOut.signedOut = true;
        throw signedOut;
      }
      if (!response.ok) {
        throw new Error(url + ": " + response.status);
      }
      return response.json();
    });
  }

  function refresh() {
    Promise.all([getJson(root.dataset.orderUrl), getJson(root.dataset.eventsUrl)])
      .then(function (results) {
        var order = results[0];
        showStatus(order);
        showBanner(order);
        showFields(order);
        showMilestones(order);
        showLines(order);
        showLists(order);
        showActions(order);
        showEvents(results[1].events);
        if (!order.final) {
          window.setTimeout(refresh, nextPoll(order.source));
        }
      })
      .catch(function (error) {
        if (error.signedOut) {
          // Retrying cannot help until the operator signs in again.
          document.getElementById("order-signed-out").hidden = false;
          return;
        }
        // The server or Temporal is briefly away: the page keeps what it shows; try again.
        window.setTimeout(refresh, POLL_MS);
      });
  }

  if (root.dataset.final !== "true") {
    window.setTimeout(refresh, nextPoll(root.dataset.source));
  }
})();
