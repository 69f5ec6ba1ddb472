// One call from Node.js with its standard library: send a line, read a
// line.  With the daemon running:  node call.js add '[1, 2]'
// (TASKD_PORT, if set, replaces the default port 12345.)
'use strict';
const net = require('node:net');
const readline = require('node:readline');

// The reply is an envelope: return the result, or throw the error (its
// type, message, and for a task that raised, the exception's class name).
function taskdResult(line) {
  const reply = JSON.parse(line);
  if (reply.type === 'result') return reply.result;
  throw Object.assign(new Error(reply.error.message), reply.error);
}

const [fn = 'add', args = '[1, 2]'] = process.argv.slice(2);
const socket = net.connect(Number(process.env.TASKD_PORT || 12345), '127.0.0.1');
const lines = readline.createInterface({ input: socket });
socket.write(JSON.stringify({ function: fn, args: JSON.parse(args) }) + '\n');
lines.once('line', (line) => {
  socket.end();
  try {
    console.log(JSON.stringify(taskdResult(line)));
  } catch (error) {
    console.error(`${error.type}: ${error.message}${error.exception ? ` (${error.exception})` : ''}`);
    process.exitCode = 1;
  }
});
lines.on('error', (error) => {
  console.error(`taskd: ${error.message}`);
  process.exitCode = 1;
});
