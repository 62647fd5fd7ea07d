import sys
sys.argv_mode = int(sys.argv[1]); sys.argv = sys.argv[:1]
exec(open("/tmp/hv/bench.py").read().split('if __name__')[0])
class FakeHvd: pass
import horovod.tensorflow.keras as hvd
print("solo", sys.argv_mode, fn(sys.argv_mode, 60), flush=True)
