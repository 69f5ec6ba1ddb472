// A small taskd client for Node.js (18+), standard library only.
//
//   const { Taskd } = require('./taskd');
//   const taskd = await Taskd.connect({ port: 12345 });
//   await taskd.call('add', [1, 2]);              // 3
//
// Every call carries an id, so calls may be made at once and are answered
// as they finish.  A failed call rejects with a TaskdError carrying the
// error's type (and, for a task that raised, its exception's class name).
'use strict';
const net = require('node:net');
const readline = require('node:readline');
const { once } = require('node:events');

class TaskdError extends Error {
  constructor(error) {
    super(error.message);
    this.name = 'TaskdError';
    this.type = error.type; // "task_failed", "unknown_task", "timeout", "cancelled", ...
    this.exception = error.exception; // for "task_failed": as "ValueError"
    this.traceback = error.traceback; // for "task_failed": the worker's traceback
  }
}

class Taskd {
  /**
   * Connect; with a token, say hello with it first (a daemon started with
   * --auth-token-file needs it).  Resolves to a Taskd.
   */
  static async connect({ host = '127.0.0.1', port = 12345, token } = {}) {
    const socket = net.connect(port, host);
    await once(socket, 'connect');
    const taskd = new Taskd(socket);
    if (token !== undefined) {
      taskd.hello = await taskd.sayHello(token);
    }
    return taskd;
  }

  constructor(socket) {
    this.socket = socket;
    this.lastId = 0;
    this.calls = new Map(); // id => { resolve, reject, onProgress }
    this.waiting = []; // hello replies, answered in order
    readline.createInterface({ input: socket })
      .on('line', (line) => this.lineReceived(line))
      .on('error', () => {}); // the socket's 'close' fails what is left
    socket.on('close', () => this.failAll(new Error('taskd closed the connection')));
  }

  /**
   * Say hello (with the token, if the daemon needs one); resolves to the
   * daemon's reply: { server: 'taskd', tasks: [...], ... }.
   */
  sayHello(token) {
    const request = { type: 'hello', version: 1 };
    if (token !== undefined) request.token = token;
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.send(request);
    });
  }

  /**
   * Call a task; resolves to its result, rejects with a TaskdError.
   *
   * @param args an array (positional) or an object (keyword arguments)
   * @param options.onProgress called with each progress report
   * @param options.signal an AbortSignal: aborting cancels the call
   * @param options.timeout seconds the call may run (at most the daemon's)
   */
  call(fn, args = [], { kwargs, timeout, onProgress, signal } = {}) {
    const id = ++this.lastId;
    const request = { function: fn, args, id };
    if (kwargs !== undefined) request.kwargs = kwargs;
    if (timeout !== undefined) request.timeout = timeout;
    if (onProgress !== undefined) request.progress = true;
    return new Promise((resolve, reject) => {
      // A cancelled call ends with a "cancelled" error, like any other.
      const cancel = () => this.send({ type: 'cancel', id });
      const done = () => signal?.removeEventListener('abort', cancel);
      this.calls.set(id, {
        resolve: (value) => { done(); resolve(value); },
        reject: (error) => { done(); reject(error); },
        onProgress,
      });
      this.send(request);
      if (signal?.aborted) cancel();
      else signal?.addEventListener('abort', cancel);
    });
  }

  /** Close the connection once every call made has been answered. */
  async close() {
    this.socket.end();
    if (!this.socket.closed) await once(this.socket, 'close');
  }

  send(message) {
    this.socket.write(JSON.stringify(message) + '\n');
  }

  lineReceived(line) {
    const reply = JSON.parse(line);
    const call = this.calls.get(reply.id);
    if (reply.type === 'progress') {
      call?.onProgress?.(reply.progress);
    } else if (reply.type === 'hello') {
      this.waiting.shift()?.resolve(reply);
    } else if (reply.type === 'error' && reply.id === undefined) {
      // An error without an id is about the connection: unauthenticated,
      // busy (too many connections), line_too_long.  It ends every call.
      this.failAll(new TaskdError(reply.error));
    } else if (call !== undefined && (reply.type === 'result' || reply.type === 'error')) {
      this.calls.delete(reply.id);
      if (reply.type === 'result') call.resolve(reply.result);
      else call.reject(new TaskdError(reply.error));
    } // any other reply type is one a newer daemon added: ignore it
  }

  failAll(error) {
    for (const waiter of this.waiting.splice(0)) waiter.reject(error);
    for (const call of this.calls.values()) call.reject(error);
    this.calls.clear();
  }
}

module.exports = { Taskd, TaskdError };
