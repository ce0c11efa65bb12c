from services.identity.server import build
from shared.runtime import serve

serve("identity", build)
