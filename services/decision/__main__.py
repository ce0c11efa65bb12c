from services.decision.server import build
from shared.runtime import serve

serve("decision", build)
