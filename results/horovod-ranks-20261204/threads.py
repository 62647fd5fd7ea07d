import os, time, glob, sys
def snap():
    d={}
    for t in glob.glob("/proc/[0-9]*/task/[0-9]*"):
        try:
            st=open(t+"/stat").read(); comm=open(t+"/comm").read().strip()
            r=st.rsplit(")",1)[1].split(); d[t]=(int(r[11])+int(r[12]), comm)
        except Exception: pass
    return d
for i in range(int(sys.argv[1])):
    a=snap(); time.sleep(4); b=snap()
    rows=sorted(((b[k][0]-a[k][0], k.split('/')[2], b[k][1]) for k in b if k in a), reverse=True)[:8]
    print(i, [r for r in rows if r[0] > 10], flush=True)
