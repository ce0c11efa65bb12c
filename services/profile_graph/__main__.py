from services.profile_graph.server import build
from shared.runtime import serve

serve("profile_graph", build)
