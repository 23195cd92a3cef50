// Shared by scu.js and scp.js: load dcmjs-dimse from the folder tests/peers/dcmjs.py installed it
// in (DCMJS_DIMSE_PATH), keep its log quiet, and make every outgoing connection leave from the
// test's own loopback address (DCMJS_BIND), as it would from the peer's own host.
'use strict';
const net = require('net');

const bind = process.env.DCMJS_BIND;
if (bind) {
  const connect = net.connect;
  net.connect = net.createConnection = function (opts, ...rest) {
    if (opts && typeof opts === 'object') opts = { localAddress: bind, ...opts };
    return connect.call(net, opts, ...rest);
  };
}

// dcmjs warns about private tags through console: stdout is for this driver's JSON lines only.
for (const level of ['log', 'info', 'warn', 'debug']) console[level] = (...args) => console.error(...args);

const dimse = require(process.env.DCMJS_DIMSE_PATH);
dimse.log.setLevel(process.env.DCMJS_LOG_LEVEL || 'silent');

function out(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

// The elements a test looks at, as plain strings.
function summary(dataset) {
  if (!dataset) return null;
  const e = dataset.getElements();
  const pick = {};
  for (const k of ['PatientID', 'StudyInstanceUID', 'SOPInstanceUID', 'SOPClassUID', 'RetrieveAETitle',
    'QueryRetrieveLevel', 'NumberOfStudyRelatedInstances']) {
    if (e[k] !== undefined) pick[k] = Array.isArray(e[k]) ? e[k].join('\\') : e[k];
  }
  return pick;
}

module.exports = { dimse, out, summary };
