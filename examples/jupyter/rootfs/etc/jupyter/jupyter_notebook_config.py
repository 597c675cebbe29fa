# Jupyter Notebook (6.4) behind spawngate and Traefik. See examples/jupyter/.
import os

from notebook.auth.login import LoginHandler
from tornado import web

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)


class SpawngateOnly(LoginHandler):
    """No login form: the token comes from spawngate on every request, so anyone
    who reaches this page did not come through spawngate (or lost their session)."""

    def get(self):
        raise web.HTTPError(403, "open this notebook server through spawngate")

    post = get

    @classmethod
    def should_check_origin(cls, handler):
        # Jupyter skips its Origin check for token-authenticated requests, and behind
        # spawngate every request carries the token: check Origin == Host always, so a
        # page of another origin cannot drive the API or a kernel WebSocket.
        return True


base = os.environ.get("SPAWNGATE_BASE_PATH", "").rstrip("/")
c.NotebookApp.base_url = base + "/"
c.NotebookApp.ip = "0.0.0.0"
c.NotebookApp.port = 8888
c.NotebookApp.port_retries = 0
c.NotebookApp.open_browser = False
c.NotebookApp.notebook_dir = os.environ.get("JUPYTER_NOTEBOOK_DIR", "/home/jovyan/work")
# The token is JUPYTER_TOKEN (the container's SPAWNGATE_SECRET); no password.
c.NotebookApp.password = ""
c.NotebookApp.password_required = False
c.NotebookApp.login_handler_class = SpawngateOnly
# Behind a proxy: Traefik preserves Host, so Jupyter's own Origin == Host check
# (WebSockets, API) stays right without allow_origin; X-Forwarded-* give the client's
# scheme and address. Listening on 0.0.0.0 allows non-loopback Host headers.
c.NotebookApp.allow_remote_access = True
c.NotebookApp.trust_xheaders = True
# The container's life is spawngate's business: no Quit button, no shutdown API.
c.NotebookApp.quit_button = False
c.NotebookApp.shutdown_no_activity_timeout = 0
