// The Taskd client at work.  With the daemon running:  node demo.js
// (TASKD_PORT replaces the default port 12345; TASKD_TOKEN, if set, is
// sent in a hello first, as a daemon with --auth-token-file requires.)
'use strict';
const { Taskd, TaskdError } = require('./taskd');

async function main() {
  const taskd = await Taskd.connect({
    port: Number(process.env.TASKD_PORT || 12345),
    token: process.env.TASKD_TOKEN,
  });
  console.log('add:', await taskd.call('add', [20, 22]));
  console.log('keywords:', await taskd.call('add', { a: 'tic', b: 'tac' }));
  // The envelope keeps results and errors apart, whatever a task returns.
  console.log('echo:', JSON.stringify(await taskd.call('echo', [{ type: 'error' }])));
  for (const [fn, args] of [['fail', ['no luck']], ['send_fax', ['0123']]]) {
    try {
      await taskd.call(fn, args);
    } catch (error) {
      if (!(error instanceof TaskdError)) throw error;
      console.log(`${fn}: ${error.type}${error.exception ? ', ' + error.exception : ''}: ${error.message}`);
    }
  }

  // Pipelined: every call is sent at once and answered as it finishes.
  const order = [];
  const batch = { slow: ['sleep', [0.5]], sum: ['add', [1, 2]], hi: ['echo', ['hi']] };
  const results = await Promise.all(Object.entries(batch).map(async ([name, [fn, args]]) => {
    const result = await taskd.call(fn, args);
    order.push(name);
    return `${name}=${JSON.stringify(result)}`;
  }));
  console.log('answered in this order:', order.join(' '));
  console.log('results:', results.join(' '));

  // Progress: the steps task reports after each step.
  const steps = await taskd.call('steps', [3, 0.1], {
    onProgress: (report) => console.log(`progress: ${report.done} of ${report.of}`),
  });
  console.log('steps:', steps);

  // Cancel: abort the signal, and the call ends with a "cancelled" error.
  const controller = new AbortController();
  const started = Date.now();
  setTimeout(() => controller.abort(), 300);
  try {
    await taskd.call('sleep', [60], { signal: controller.signal });
  } catch (error) {
    const seconds = Math.round((Date.now() - started) / 100) / 10;
    console.log(`sleep(60): ${error.type} after ${seconds} s: ${error.message}`);
  }
  await taskd.close();
}

main().catch((error) => {
  console.error(`taskd: ${error.type ? error.type + ': ' : ''}${error.message}`);
  process.exitCode = 1;
});
