from services.gateway.server import build
from shared.runtime import serve

serve("gateway", build)
