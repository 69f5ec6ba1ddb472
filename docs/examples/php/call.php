<?php
// Call taskd from PHP with the standard library only: one blocking call at
// a time on one connection.  With the daemon running:  php call.php
// (TASKD_PORT, if set, replaces the default port 12345.)

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

// Send one call and wait for its reply.  Without an "id" the replies come
// in the order of the calls, so one line out, one line back.
function taskd_call($socket, string $function, array $args = []): mixed
{
    $line = json_encode(['function' => $function, 'args' => $args], JSON_THROW_ON_ERROR) . "\n";
    if (fwrite($socket, $line) !== strlen($line)) {
        throw new RuntimeException('cannot send to taskd');
    }
    $reply = fgets($socket);
    if ($reply === false) {
        throw new RuntimeException('taskd closed the connection, or no reply in time');
    }
    return taskd_result(json_decode($reply, true, 512, JSON_THROW_ON_ERROR));
}

$port = getenv('TASKD_PORT') ?: '12345';
$socket = stream_socket_client("tcp://127.0.0.1:$port", $errno, $errstr, 5);
if ($socket === false) {
    fwrite(STDERR, "cannot connect to taskd: $errstr\n");
    exit(1);
}
stream_set_timeout($socket, 60);  // the longest a call may take here

echo 'add(1, 2) = ', taskd_call($socket, 'add', [1, 2]), "\n";
// An associative array is sent as a JSON object: keyword arguments.
echo 'add(a: "tic", b: "tac") = ', taskd_call($socket, 'add', ['a' => 'tic', 'b' => 'tac']), "\n";
echo 'echo = ', json_encode(taskd_call($socket, 'echo', [['to' => 'a@example.com', 'n' => [1, 2]]])), "\n";
foreach ([['fail', ['no luck']], ['send_fax', []]] as [$function, $args]) {
    try {
        taskd_call($socket, $function, $args);
    } catch (RuntimeException $e) {
        echo "$function failed: ", $e->getMessage(), "\n";
    }
}
fclose($socket);
