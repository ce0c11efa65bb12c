from services.identity.server import GC_THRESHOLDS, build
from shared.runtime import serve

serve("identity", build, GC_THRESHOLDS)
