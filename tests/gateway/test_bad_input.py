import time
def test_probe(gateway, storescp_sink, dcmtk):
    from conftest import route
    t = time.monotonic()
    gw = gateway(route("sink", storescp_sink.port, upstream_ae="SINK"))
    print("startup", time.monotonic() - t)
    t = time.monotonic()
    r = dcmtk.run("echoscu", "-aet", "X", "-aec", "PACSGUARD", "127.0.0.1", str(gw.port("sink")), timeout=10)
    print("echo", time.monotonic() - t, r.returncode, r.stdout, r.stderr)
    print([ (e.kind, e.message) for e in gw.events()])
