"""gunicorn settings for the web app (`make run` starts gunicorn with it: tools/stack.py).

Threaded workers: a request mostly waits on Temporal, so threads are cheap
concurrency; each async view runs in an event loop of its own (Flask[async]).
Each worker process creates its own Temporal client on its first request,
after the fork (core/temporal_client.py), and logs it once.
"""

import logging
import os
import shutil

from core.settings import Settings

settings = Settings.from_env()
# Each worker process writes its request metrics here; /metrics adds them up (web/metrics.py).
metrics_dir = settings.data_dir / "prometheus"
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
bind = f"{settings.web_host}:{settings.web_port}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
# gunicorn's gthread with a read timeout (WEB_READ_TIMEOUT): a client that stops mid-request loses its thread.
worker_class = "web.gunicorn_worker.ReadTimeoutThreadWorker"
threads = int(os.environ.get("WEB_THREADS", "32"))
timeout = 30
graceful_timeout = 10
# gunicorn's control socket is one path per user: two instances (tests beside
# `make run`) would fight over it, and nothing here uses it.
control_socket_disable = True
accesslog = "-" if os.environ.get("WEB_ACCESS_LOG", "0") == "1" else None
# The path without its query string: an applicant's link carries its key there (loans/web.py).
access_log_format = '%(h)s - - %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "-" "%(a)s"'


def on_starting(server):
    # Samples of an earlier run's processes would be added to this run's.
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_fork(server, worker):
    # The app's own loggers (the Temporal client's connection line) go to
    # stderr beside gunicorn's.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    from web.gunicorn_worker import StalledClientFilter

    logging.getLogger("gunicorn.error").addFilter(StalledClientFilter())


def when_ready(server):
    from web.auth import signin_hint

    ui = settings.temporal_ui_url
    server.log.info("Loan application form: %s/", settings.public_url)
    server.log.info("Orders dashboard:      %s/orders", settings.public_url)
    server.log.info("Operator sign-in:      %s/signin  (%s)", settings.public_url, signin_hint(settings))
    server.log.info("Temporal Web UI:       %s/namespaces/default/workflows", ui)
