// dcmjs-dimse's Client as an SCU: one association, the requests of the JSON spec in argv[2]
// ({host, port, calling, called, requests: [{op: echo|store|find|move|get, ...}]}), one JSON line
// per thing that happens on stdout. Exit 0: released; 2: rejected; 3: closed without a release
// or a network error; 4: nothing ended the association within the spec's timeout_ms.
'use strict';
const path = require('path');
const fs = require('fs');
const { dimse, out, summary } = require('./common.js');

const { Client } = dimse;
const { CEchoRequest, CStoreRequest, CFindRequest, CMoveRequest, CGetRequest } = dimse.requests;
const { CStoreResponse } = dimse.responses;
const { Status } = dimse.constants;

const spec = JSON.parse(process.argv[2]);
const client = new Client();
let ended = false;
function finish(code) {
  if (ended) return;
  ended = true;
  out({ event: 'exit', code });
  process.exitCode = code;
  setTimeout(() => process.exit(code), 50);
}

function counters(r) {
  const c = {};
  for (const [k, f] of [['remaining', 'getRemaining'], ['completed', 'getCompleted'],
    ['failures', 'getFailures'], ['warnings', 'getWarnings']]) {
    if (typeof r[f] === 'function' && r[f]() !== undefined) c[k] = r[f]();
  }
  return c;
}

let responses = 0;
function track(op, request, cancel) {
  request.on('response', (response) => {
    responses++;
    // spec.abort_after: an A-ABORT (PS3.8 7.3) once that many responses came, as a user's "stop".
    if (spec.abort_after === responses) setImmediate(() => { out({ event: 'aborting' }); client.abort(); });
    // A request's "cancel": a C-CANCEL (PS3.7 9.3.2.3) at its first pending response.
    if (cancel && response.getStatus() === Status.Pending && !request.cancelled) {
      request.cancelled = true;
      client.cancel(request);
    }
    out({ event: 'response', op, status: response.getStatus(), dataset: summary(response.getDataset()),
      error_comment: response.getErrorComment ? response.getErrorComment() || null : null,
      ...counters(response) });
  });
  client.addRequest(request);
}


for (const r of spec.requests) {
  if (r.op === 'echo') track('C-ECHO', new CEchoRequest());
  else if (r.op === 'store') for (const f of r.files) track('C-STORE', new CStoreRequest(f));
  else if (r.op === 'find') {
    track('C-FIND', (r.level === 'IMAGE' ? CFindRequest.createImageFindRequest : CFindRequest.createStudyFindRequest)(r.keys),
      r.cancel);
  }
  else if (r.op === 'move') {
    track('C-MOVE', r.sop ? CMoveRequest.createImageMoveRequest(r.destination, r.study, r.series, r.sop)
      : CMoveRequest.createStudyMoveRequest(r.destination, r.study));
  } else if (r.op === 'get') {
    track('C-GET', r.sop ? CGetRequest.createImageGetRequest(r.study, r.series, r.sop)
      : CGetRequest.createStudyGetRequest(r.study), r.cancel);
  }
  else throw new Error(`unknown op ${r.op}`);
}

// C-GET sub-operations come back on this association (PS3.4 C.4.3): keep their dataset bytes.
client.on('cStoreRequest', (request, callback) => {
  const ds = request.getDataset();
  const sop = request.getAffectedSopInstanceUid();
  if (spec.get_folder) {
    fs.mkdirSync(spec.get_folder, { recursive: true });
    ds.toFile(path.join(spec.get_folder, `${sop}.dcm`));
  }
  out({ event: 'sub-store', sop, dataset: summary(ds) });
  const response = CStoreResponse.fromRequest(request);
  response.setStatus(Status.Success);
  callback(response);
});
client.on('associationAccepted', () => out({ event: 'accepted' }));
client.on('associationRejected', (r) => { out({ event: 'rejected', ...r }); finish(2); });
client.on('associationReleased', () => { out({ event: 'released' }); finish(0); });
client.on('networkError', (e) => { out({ event: 'network-error', message: e.message }); });
client.on('closed', () => { out({ event: 'closed' }); finish(3); });
setTimeout(() => { out({ event: 'timeout' }); finish(4); }, spec.timeout_ms || 15000);

if (spec.max_pdu !== undefined) dimse.Implementation.setMaxPduLength(spec.max_pdu);
// spec.options: more of Client.send's options (asyncOps, userIdentity), as a caller would give them.
client.send(spec.host, spec.port, spec.calling, spec.called,
  { associationLingerTimeout: 0, connectTimeout: 5000, associationTimeout: 10000, pduTimeout: 10000,
    ...(spec.options || {}) });
