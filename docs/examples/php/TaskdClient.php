<?php
// A small, blocking taskd client for PHP 8.1+, standard library only.
//
//     require 'TaskdClient.php';
//     $taskd = new TaskdClient('tcp://127.0.0.1:12345');
//     echo $taskd->call('add', [1, 2]);          // 3
//
// A call that fails throws a TaskdError carrying the error's type (and,
// for a task that raised, its exception's class name); a lost connection
// or a reply that does not come in time throws a TaskdConnectionError.

/**
 * taskd answered a call with an error.
 */
final class TaskdError extends RuntimeException
{
    /**
     * @param string $type the error's type: "task_failed", "unknown_task",
     *     "timeout", "unauthenticated", ... (see docs/protocol.md)
     * @param ?string $exception for "task_failed": the task's exception
     *     class name, as "ValueError"
     * @param ?string $traceback for "task_failed": the worker's traceback
     */
    public function __construct(
        public readonly string $type,
        string $message,
        public readonly ?string $exception = null,
        public readonly ?string $traceback = null,
    ) {
        parent::__construct($message);
    }

    /**
     * The exception for an error reply, as decoded by json_decode(..., true).
     */
    public static function fromReply(array $reply): self
    {
        $error = $reply['error'];
        return new self($error['type'], $error['message'], $error['exception'] ?? null, $error['traceback'] ?? null);
    }
}

/**
 * The connection to taskd failed, closed, or a reply did not come in time.
 */
final class TaskdConnectionError extends RuntimeException
{
}

final class TaskdClient
{
    /** @var resource */
    private $socket;
    private int $lastId = 0;
    /** The daemon's hello reply (its tasks and limits), once hello() has run. */
    public ?array $hello = null;

    /**
     * Connect; with a token, authenticate at once (a daemon started with
     * --auth-token-file needs it).
     *
     * @param float $timeout seconds to connect, and to wait for any reply
     */
    public function __construct(string $address = 'tcp://127.0.0.1:12345', ?string $token = null, float $timeout = 60.0)
    {
        $socket = @stream_socket_client($address, $errno, $errstr, $timeout);
        if ($socket === false) {
            throw new TaskdConnectionError("cannot connect to taskd at $address: $errstr");
        }
        stream_set_timeout($socket, (int) $timeout, (int) (fmod($timeout, 1) * 1e6));
        $this->socket = $socket;
        if ($token !== null) {
            $this->hello($token);
        }
    }

    /**
     * Say hello (with the token, if the daemon needs one) and return the
     * daemon's reply: ['server' => 'taskd', 'tasks' => [...], ...].
     *
     * @throws TaskdError "unauthenticated" if the token is wrong
     */
    public function hello(?string $token = null): array
    {
        $request = ['type' => 'hello', 'version' => 1];
        if ($token !== null) {
            $request['token'] = $token;
        }
        $this->send([$request]);
        // No call is in flight, so the next reply without an id is ours.
        do {
            $reply = $this->receive();
        } while (isset($reply['id']) || !in_array($reply['type'], ['hello', 'error'], true));
        if ($reply['type'] === 'error') {
            throw TaskdError::fromReply($reply);
        }
        return $this->hello = $reply;
    }

    /**
     * Call a task and return its result.
     *
     * @param array $args a list for positional arguments, an associative
     *     array for keyword arguments
     * @param array $kwargs keyword arguments to add to positional ones
     * @param ?float $timeout seconds the call may run (at most the daemon's)
     * @throws TaskdError if the call failed
     */
    public function call(string $function, array $args = [], array $kwargs = [], ?float $timeout = null): mixed
    {
        $request = ['function' => $function, 'args' => $args];
        if ($kwargs) {
            $request['kwargs'] = $kwargs;
        }
        if ($timeout !== null) {
            $request['timeout'] = $timeout;
        }
        $answer = $this->batch([$request])[0];
        if ($answer instanceof TaskdError) {
            throw $answer;
        }
        return $answer;
    }

    /**
     * Run many calls at once, at most $window in flight, and return every
     * answer keyed as the calls were, in the order taskd answered them: the
     * result, or a TaskdError for a call that failed.
     *
     * @param array $calls key => request, as ['function' => 'add', 'args' => [1, 2]]
     */
    public function batch(array $calls, int $window = 100): array
    {
        $keys = [];      // the id we gave each call in flight => its key
        $answers = [];
        $pending = $calls;
        while ($pending || $keys) {
            $lines = [];
            while ($pending && count($keys) + count($lines) < $window) {
                $key = array_key_first($pending);
                $id = ++$this->lastId;
                $keys[$id] = $key;
                $lines[] = ['id' => $id] + $pending[$key];
                unset($pending[$key]);
            }
            $this->send($lines);
            $reply = $this->receive();
            if ($reply['type'] === 'error' && !isset($reply['id'])) {
                throw TaskdError::fromReply($reply);   // busy, unauthenticated: for the connection
            }
            $id = $reply['id'] ?? null;
            if (!in_array($reply['type'], ['result', 'error'], true) || !is_int($id) || !isset($keys[$id])) {
                continue;   // not a reply to one of these calls (a type we do not know)
            }
            $answers[$keys[$id]] = $reply['type'] === 'result' ? $reply['result'] : TaskdError::fromReply($reply);
            unset($keys[$id]);
        }
        return $answers;
    }

    public function close(): void
    {
        fclose($this->socket);
    }

    private function send(array $requests): void
    {
        if (!$requests) {
            return;
        }
        $data = '';
        foreach ($requests as $request) {
            $data .= json_encode($request, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE) . "\n";
        }
        if (@fwrite($this->socket, $data) !== strlen($data)) {
            throw new TaskdConnectionError('cannot send to taskd: the connection is lost');
        }
    }

    private function receive(): array
    {
        $line = fgets($this->socket);
        if ($line === false) {
            $why = stream_get_meta_data($this->socket)['timed_out'] ? 'no reply in time' : 'taskd closed the connection';
            throw new TaskdConnectionError($why);
        }
        return json_decode($line, true, 512, JSON_THROW_ON_ERROR);
    }
}
