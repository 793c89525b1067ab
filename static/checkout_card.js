/* The card fields of the shop's checkout (templates/shop/checkout.html, shop/card.py).
 *
 * Stripe.js puts its card fields in #card. When the customer places the order,
 * this asks Stripe.js to confirm the form's SetupIntent with the card (Stripe
 * checks it; the number never reaches the shop), and only then sends the form,
 * whose SetupIntent ID the server reads back from Stripe. A card Stripe refuses
 * stops here, with the reason beside the fields, and nothing is sent.
 *
 * In `make run` Stripe.js is localstripe's stand-in, whose fields are plain inputs
 * in the page with placeholders only: each gets a label here, and the styles lay
 * them out. Stripe's own fields live in a frame of their own and are labelled there.
 */
(function () {
  "use strict";

  var mount = document.getElementById("card");
  var form = document.getElementById("checkout-form");
  var errors = document.getElementById("card-errors");
  if (!mount || !form) {
    return;
  }
  if (typeof window.Stripe !== "function") {
    errors.textContent = mount.dataset.unloaded; // Stripe.js did not load: no fields to type the card in
    return;
  }
  // The stand-in's fields, by their placeholder: the label, and what a browser may fill them with.
  var FIELDS = {
    number: ["Card number", "cc-number", "numeric"],
    exp_month: ["Expiry month (MM)", "cc-exp-month", "numeric"],
    exp_year: ["Expiry year (YY)", "cc-exp-year", "numeric"],
    cvc: ["CVC", "cc-csc", "numeric"],
    postal_code: ["Billing postcode (optional)", "postal-code", "text"],
  };
  var stripe = window.Stripe(mount.dataset.key);
  var card = stripe.elements().create("card");
  card.mount(mount);
  var inputs = [];
  Array.prototype.forEach.call(mount.querySelectorAll("input[placeholder]"), function (input) {
    var field = FIELDS[input.getAttribute("placeholder")];
    if (!field) {
      return;
    }
    var label = document.createElement("label");
    var name = document.createElement("span");
    label.className = "card-field card-field-" + input.getAttribute("placeholder").replace("_", "-");
    name.textContent = field[0];
    input.parentNode.insertBefore(label, input);
    label.appendChild(name);
    label.appendChild(input); // the same input, moved: the stand-in still reads it
    input.removeAttribute("placeholder");
    input.setAttribute("autocomplete", field[1]);
    input.setAttribute("inputmode", field[2]);
    input.setAttribute("aria-describedby", "card-errors");
    inputs.push(input);
  });

  function markInvalid(invalid) {
    var group = mount.closest("fieldset");
    if (group) {
      group.classList.toggle("field-invalid", invalid); // the red bar goes with the message
    }
    inputs.forEach(function (input) {
      if (invalid) {
        input.setAttribute("aria-invalid", "true");
      } else {
        input.removeAttribute("aria-invalid");
      }
    });
  }
  markInvalid(errors.textContent.trim() !== "");
  card.on("change", function () {
    errors.textContent = ""; // what was said is about a card no longer typed
    markInvalid(false);
  });

  var button = form.querySelector("button[type=submit]");
  var confirmed = false;

  function refused(error) {
    var message = String((error && error.message) || "");
    var declined = error && (error.code === "card_declined" || /declined/i.test(message));
    // Stripe not reached (the stand-in passes the browser's own TypeError on: "Failed to fetch").
    var unreached = !error || error.type === "api_connection_error" || error instanceof TypeError && /fetch|network/i.test(message);
    errors.textContent = declined ? mount.dataset.declined : unreached ? mount.dataset.failed : mount.dataset.invalid;
    markInvalid(true);
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }

  form.addEventListener("submit", function (event) {
    if (confirmed) {
      return; // the card is confirmed: the form goes as it is
    }
    event.preventDefault();
    if (button.disabled) {
      return; // pressed again while Stripe is checking the card
    }
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    errors.textContent = "";
    var name = form.elements["address.name"] ? form.elements["address.name"].value : "";
    var confirming;
    try {
      confirming = stripe.confirmCardSetup(mount.dataset.secret, {
        payment_method: { card: card, billing_details: { name: name } },
      });
    } catch (err) {
      refused(null);
      return;
    }
    Promise.resolve(confirming).then(
      function (result) {
        if (!result || result.error) {
          refused(result && result.error);
          return;
        }
        confirmed = true;
        form.submit();
      },
      function () {
        refused(null);
      }
    );
  });
})();
