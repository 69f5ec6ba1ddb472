<?php
// TaskdClient at work.  With the daemon running:  php demo.php
// (TASKD_PORT replaces the default port 12345; TASKD_TOKEN, if set, is
// sent in a hello first, as a daemon with --auth-token-file requires.)
require __DIR__ . '/TaskdClient.php';

$port = getenv('TASKD_PORT') ?: '12345';
$taskd = new TaskdClient("tcp://127.0.0.1:$port", getenv('TASKD_TOKEN') ?: null);

printf("add: %s\n", $taskd->call('add', [20, 22]));
printf("keywords: %s\n", $taskd->call('add', ['a' => 'tic', 'b' => 'tac']));
// The envelope keeps results and errors apart, whatever a task returns.
printf("echo: %s\n", json_encode($taskd->call('echo', [['type' => 'error']])));

try {
    $taskd->call('fail', ['no luck']);
} catch (TaskdError $e) {
    echo "fail: {$e->type}, {$e->exception}: {$e->getMessage()}\n";
}
try {
    $taskd->call('send_fax', ['0123']);
} catch (TaskdError $e) {
    echo "send_fax: {$e->type}: {$e->getMessage()}\n";
}

// Pipelined: all sent at once, answered as each finishes.
$answers = $taskd->batch([
    'slow' => ['function' => 'sleep', 'args' => [0.5]],
    'sum' => ['function' => 'add', 'args' => [1, 2]],
    'oops' => ['function' => 'fail', 'args' => ['not this one']],
]);
foreach ($answers as $key => $answer) {
    echo "batch $key: ", $answer instanceof TaskdError ? "{$answer->type} {$answer->exception}" : json_encode($answer), "\n";
}
// A call that runs past its timeout: its worker is stopped (and replaced).
try {
    $taskd->call('sleep', [5], timeout: 0.5);
} catch (TaskdError $e) {
    echo "sleep: {$e->type}: {$e->getMessage()}\n";
}
$taskd->close();
