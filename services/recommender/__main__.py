from services.recommender.server import build
from shared.runtime import serve

serve("recommender", build)
