import os, time
os.environ["OPENBLAS_NUM_THREADS"]="1"; os.environ["OMP_NUM_THREADS"]="1"; os.environ["MKL_NUM_THREADS"]="1"
import numpy as np
a=np.random.rand(1000,1000).astype(np.float32)
t=time.time()
for _ in range(60): a@a
print(f"{time.time()-t:.2f}s")
