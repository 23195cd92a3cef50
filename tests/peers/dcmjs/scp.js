// dcmjs-dimse's Server as a small archive: C-ECHO, C-STORE (the received dataset bytes kept as
// they came, <SOP Instance UID>.raw, with <uid>.json naming its transfer syntax, patient and study),
// C-FIND (from what it holds), C-GET (sub-operations on the same association, PS3.4 C.4.3; a
// C-CANCEL ends it) and C-MOVE (a new association to the destination of spec.moves, PS3.4 C.4.2).
// Spec (argv[2], JSON): {host, port, folder, moves: {AE: [host, port]}, sub_delay_ms}. It listens
// on host only.
// One JSON line per association, request and end on stdout.
'use strict';
const fs = require('fs');
const net = require('net');
const path = require('path');
const { dimse, out, summary } = require('./common.js');

const { Server, Scp, Client, Dataset } = dimse;
const { CStoreRequest } = dimse.requests;
const { CEchoResponse, CFindResponse, CStoreResponse, CMoveResponse, CGetResponse } = dimse.responses;
const { Status, PresentationContextResult } = dimse.constants;

const spec = JSON.parse(process.argv[2]);
fs.mkdirSync(spec.folder, { recursive: true });

// Server.listen() takes a port only (every address): keep it to the test's own address.
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  return typeof port === 'number' ? listen.call(this, { port, host: spec.host }, ...rest) : listen.call(this, port, ...rest);
};

function held() {
  return fs.readdirSync(spec.folder).filter((n) => n.endsWith('.json'))
    .map((n) => JSON.parse(fs.readFileSync(path.join(spec.folder, n))));
}
function matching(keys) {
  return held().filter((m) => (!keys.PatientID || m.patient === keys.PatientID) &&
    (!keys.StudyInstanceUID || m.study === keys.StudyInstanceUID) &&
    (!keys.SOPInstanceUID || m.sop === keys.SOPInstanceUID));
}
function datasetOf(meta) {
  return new Dataset(fs.readFileSync(path.join(spec.folder, `${meta.sop}.raw`)), meta.ts);
}

class Archive extends Scp {
  associationRequested(association) {
    this.association = association;
    out({ event: 'association', calling: association.getCallingAeTitle(), called: association.getCalledAeTitle() });
    association.getPresentationContexts().forEach((c) => {
      const context = association.getPresentationContext(c.id);
      // The first syntax the requestor proposes, as the gateway's own Storage SCP chooses (any:
      // the bytes are kept as they come, never decoded).
      context.setResult(PresentationContextResult.Accept, context.getTransferSyntaxUids()[0]);
    });
    this.sendAssociationAccept();
  }

  // Keep the dataset bytes as they arrived, before dcmjs parses them.
  createDatasetFromStoreWritableStream(writable, context, callback) {
    const raw = writable.toBuffer();
    const dataset = new Dataset(raw, context.getAcceptedTransferSyntaxUid());
    dataset.raw = raw;
    callback(dataset);
  }

  cEchoRequest(request, callback) {
    out({ event: 'C-ECHO' });
    const response = CEchoResponse.fromRequest(request);
    response.setStatus(Status.Success);
    callback(response);
  }

  cStoreRequest(request, callback) {
    const dataset = request.getDataset();
    const e = dataset.getElements();
    const meta = { sop: request.getAffectedSopInstanceUid(), sop_class: request.getAffectedSopClassUid(),
      ts: dataset.getTransferSyntaxUid(), patient: e.PatientID, study: e.StudyInstanceUID };
    fs.writeFileSync(path.join(spec.folder, `${meta.sop}.raw`), dataset.raw);
    fs.writeFileSync(path.join(spec.folder, `${meta.sop}.json`), JSON.stringify(meta));
    out({ event: 'C-STORE', ...meta });
    const response = CStoreResponse.fromRequest(request);
    response.setStatus(Status.Success);
    callback(response);
  }

  cFindRequest(request, callback) {
    const keys = request.getDataset().getElements();
    const studies = new Map();
    for (const m of matching(keys)) studies.set(m.study, m);
    const responses = [...studies.values()].map((m) => {
      const r = CFindResponse.fromRequest(request);
      r.setDataset(new Dataset({ QueryRetrieveLevel: 'STUDY', PatientID: m.patient, StudyInstanceUID: m.study,
        RetrieveAETitle: 'DCMJSARCH' }));
      r.setStatus(Status.Pending);
      return r;
    });
    const done = CFindResponse.fromRequest(request);
    done.setStatus(Status.Success);
    out({ event: 'C-FIND', keys: summary(request.getDataset()), answers: responses.length });
    callback([...responses, done]);
  }

  // One sub-operation at a time, a pending response after each (PS3.4 C.4.3.3), so that a
  // C-CANCEL between two ends the retrieve with 0xFE00 and the counts so far.
  cGetRequest(request, callback) {
    const found = matching(request.getDataset().getElements());
    let completed = 0, failed = 0;
    this.cancelled = false;
    const respond = (status) => {
      const r = CGetResponse.fromRequest(request);
      r.setStatus(status);
      r.setCompleted(completed);
      r.setFailures(failed);
      r.setRemaining(found.length - completed - failed);
      // The handler's callback takes one call (the final response); pending ones go on their own.
      if (status === Status.Pending) return this.sendResponse(request, r);
      out({ event: 'C-GET', completed, failed, status });
      callback(r);
    };
    const next = () => {
      if (this.cancelled) return respond(Status.Cancel);
      const m = found[completed + failed];
      if (!m) return respond(failed ? 0xb000 : Status.Success);
      const s = new CStoreRequest(datasetOf(m));
      // dcmjs-dimse skips, without a word, a request the association has no context for: such a
      // sub-operation fails here, or the C-GET would never end.
      if (!this.association.getAcceptedPresentationContextFromRequest(s)) {
        failed++;
        return next();
      }
      s.on('response', (resp) => {
        if (resp.getStatus() === Status.Success) completed++; else failed++;
        if (completed + failed < found.length && !this.cancelled) respond(Status.Pending);
        setTimeout(next, spec.sub_delay_ms || 0);
      });
      this.sendRequests(s);
    };
    next();
  }

  cCancelRequest() {
    out({ event: 'C-CANCEL' });
    this.cancelled = true;
  }

  cMoveRequest(request, callback) {
    const destination = request.getCommandDataset().getElement('MoveDestination');
    const found = matching(request.getDataset().getElements());
    const final = (status, completed, failed) => {
      const r = CMoveResponse.fromRequest(request);
      r.setStatus(status);
      r.setCompleted(completed); r.setFailures(failed); r.setRemaining(0);
      out({ event: 'C-MOVE', destination, completed, failed, status });
      callback([r]);
    };
    const where = (spec.moves || {})[destination];
    if (!where) return final(0xa801, 0, 0);
    if (!found.length) return final(Status.Success, 0, 0);
    const client = new Client();
    let completed = 0, failed = 0;
    for (const m of found) {
      const s = new CStoreRequest(datasetOf(m));
      s.on('response', (resp) => { if (resp.getStatus() === Status.Success) completed++; else failed++; });
      client.addRequest(s);
    }
    let reported = false;
    const report = () => {
      if (reported) return;
      reported = true;
      failed += found.length - completed - failed;
      final(failed ? 0xb000 : Status.Success, completed, failed);
    };
    client.on('associationReleased', report);
    client.on('associationRejected', report);
    client.on('closed', report);
    client.send(where[0], where[1], 'DCMJSARCH', destination, { associationLingerTimeout: 0 });
  }

  associationReleaseRequested() {
    out({ event: 'released' });
    this.sendAssociationReleaseResponse();
  }

  abort(source, reason) {
    out({ event: 'aborted', source, reason });
  }
}

const server = new Server(Archive);
server.on('networkError', (e) => out({ event: 'network-error', message: e.message }));
server.on('listening', () => out({ event: 'listening', host: spec.host, port: spec.port }));
server.listen(spec.port);
process.on('SIGTERM', () => { server.close(); process.exit(0); });
