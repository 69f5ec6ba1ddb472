<?php
// The Workerman FAQ's task pattern, adapted to taskd's replies: a WebSocket
// server hands each message to taskd over an AsyncTcpConnection and tells
// its client how the task went.  Needs Workerman
// (composer require workerman/workerman), so CI cannot run it: CI checks
// its syntax and that taskd_result() is the same as in the tested call.php.
//
// Start taskd with the mail stand-in of docs/examples/mail_tasks.py:
//     PYTHONPATH=docs/examples twistd -n taskd --tasks mail_tasks
// then this program:  php workerman.php start
use Workerman\Connection\AsyncTcpConnection;
use Workerman\Connection\TcpConnection;
use Workerman\Worker;

require_once __DIR__ . '/vendor/autoload.php';

// Every reply is an envelope: {"type":"result","result":...} or
// {"type":"error","error":{"type":...,"message":...}}.  This returns the
// result, or throws for an error: its type, message, and for a task that
// raised, the exception's class name.
function taskd_result(array $reply): mixed
{
    if ($reply['type'] === 'result') {
        return $reply['result'];
    }
    $error = $reply['error'];
    $raised = isset($error['exception']) ? " ({$error['exception']})" : '';
    throw new RuntimeException("{$error['type']}: {$error['message']}{$raised}");
}

$worker = new Worker('websocket://0.0.0.0:8080');
$worker->onMessage = function (TcpConnection $ws, $message) {
    // One connection per task, as in the FAQ.  Text:// frames lines.
    $task = new AsyncTcpConnection('Text://127.0.0.1:12345');
    $task->send(json_encode([
        'function' => 'pretend_mail',
        'args' => ['to' => $message, 'subject' => 'hello'],
    ]));
    $task->onMessage = function (AsyncTcpConnection $task, $line) use ($ws) {
        $task->close();
        try {
            $result = taskd_result(json_decode($line, true, 512, JSON_THROW_ON_ERROR));
            $ws->send('task complete: ' . json_encode($result));
        } catch (RuntimeException $e) {
            $ws->send('task failed: ' . $e->getMessage());
        }
    };
    $task->onError = function (AsyncTcpConnection $task, $code, $why) use ($ws) {
        $ws->send("taskd unreachable: $why");
    };
    $task->connect();
};

Worker::runAll();
