<?php
// A pipelined batch from PHP with the standard library only: every call
// is sent at once, each with an "id", and taskd answers each as soon as it
// finishes, in any order.  With the daemon running:  php pipeline.php
// (TASKD_PORT, if set, replaces the default port 12345.)

// The same decoder as in call.php: the result, or an exception.
function taskd_result(array $reply): mixed
{
    if ($reply['type'] === 'result') {
        return $reply['result'];
    }
    $error = $reply['error'];
    $raised = isset($error['exception']) ? " ({$error['exception']})" : '';
    throw new RuntimeException("{$error['type']}: {$error['message']}{$raised}");
}

$port = getenv('TASKD_PORT') ?: '12345';
$socket = stream_socket_client("tcp://127.0.0.1:$port", $errno, $errstr, 5);
if ($socket === false) {
    fwrite(STDERR, "cannot connect to taskd: $errstr\n");
    exit(1);
}
stream_set_timeout($socket, 60);

// The ids are ours to choose (strings or integers); each reply carries its
// call's id.  A batch much larger than the daemon's maxInFlight (100) should
// be sent in windows, reading replies in between (see TaskdClient.php).
$calls = [
    'slow' => ['function' => 'sleep', 'args' => [0.5]],
    'sum' => ['function' => 'add', 'args' => [1, 2]],
    'words' => ['function' => 'add', 'args' => ['a' => 'tic', 'b' => 'tac']],
    'oops' => ['function' => 'fail', 'args' => ['no luck']],
    'fax' => ['function' => 'send_fax', 'args' => ['0123']],
];
$batch = '';
foreach ($calls as $id => $call) {
    $batch .= json_encode($call + ['id' => $id], JSON_THROW_ON_ERROR) . "\n";
}
if (fwrite($socket, $batch) !== strlen($batch)) {
    fwrite(STDERR, "cannot send to taskd\n");
    exit(1);
}

$answers = [];
while (count($answers) < count($calls)) {
    $line = fgets($socket);
    if ($line === false) {
        fwrite(STDERR, "taskd closed the connection, or no reply in time\n");
        exit(1);
    }
    $reply = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
    if ($reply['type'] === 'error' && !isset($reply['id'])) {
        // An error without an id is about the connection (busy, unauthenticated).
        fwrite(STDERR, "taskd refused: {$reply['error']['message']}\n");
        exit(1);
    }
    if (!in_array($reply['type'], ['result', 'error'], true)) {
        continue;  // a reply type this program does not know: ignore it
    }
    try {
        $answers[$reply['id']] = json_encode(taskd_result($reply));
    } catch (RuntimeException $e) {
        $answers[$reply['id']] = 'error ' . $e->getMessage();
    }
}
fclose($socket);

echo 'answered in this order: ', implode(' ', array_keys($answers)), "\n";
foreach ($calls as $id => $call) {
    echo "$id: {$answers[$id]}\n";
}
