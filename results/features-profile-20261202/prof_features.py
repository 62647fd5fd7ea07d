import sys, time
import recspark.pipeline.features as feat
from recspark.entrypoints import features
orig = feat.overwrite_table
def timed(df, path, *a, **k):
    t = time.time(); r = orig(df, path, *a, **k)
    print(f"PROF {path.rsplit('/',1)[-1]:22s} {time.time()-t:7.1f} s", flush=True); return r
feat.overwrite_table = timed
t0 = time.time()
features(sys.argv[1:])
print(f"PROF total {time.time()-t0:.1f}", flush=True)
