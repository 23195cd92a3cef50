"""The store-and-forward route mode (docs/gateway.md, "Store-and-forward routes"): the gateway
terminates the association itself as a Storage SCP (PS3.4 B.2), writes each object durably into
a spool before it answers, runs the route's object checks, and forwards what passes to every
destination as a Storage SCU, exactly once per destination, across restarts.

Modules: ``spool`` (the durable files), ``syncing`` (the spool folder's group fsync),
``admission`` (the route's association checks on the A-ASSOCIATE-RQ), ``acceptor`` (the Storage
SCP's associations, on pacsguard's own decoder), ``receiver`` (one C-STORE into the spool),
``judging`` (the object checks and their verdicts), ``forwarder`` (sending), ``records`` (the
Events), ``route`` (one route's runtime, started by the gateway)."""
