import functools

from services.gateway.server import build
from shared.runtime import serve
from shared.settings import env_int

# The HTTP/JSON port (Connect protocol, tracker, console); tests build the gateway with a port of their own.
serve("gateway", functools.partial(build, http_port=env_int("TAILOR_HTTP_PORT", 8080, minimum=0, maximum=65535)))
