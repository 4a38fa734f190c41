#!/usr/bin/env python3
"""Writes proxy/command_table.inc, the command table of proxy/command.c.

Names, arities and key positions come from a real redis-server's COMMAND
reply, so they match the Redis version the proxy speaks; how ringproxy
routes each command (the policy: class, route handler, gate flags) is the
hand-written part below.

    python3 proxy/command_gen.py > proxy/command_table.inc
    python3 proxy/command_gen.py --markdown > docs/commands.md

starts `redis-server` (or $REDIS_SERVER) on a private unix socket, without
persistence, and stops it (by PID) when done. `--socket PATH` uses a running
server instead. The script refuses to write a table when a command is left
unclassified or its keys cannot be described, so a new Redis version is
reviewed command by command.

A new kind of command (a lock, a cross-shard transaction) is a value in
command_route (proxy/command.h), its handler in route_handlers
(proxy/router.c), and its commands mapped to it below (ROUTE_BY_ID); the
gates read the flags, so none of them changes.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# --- routing policy -------------------------------------------------------

# Answered by the proxy itself: name -> command_id.
LOCAL = {
    "ping": "CMD_PING",
    "echo": "CMD_ECHO",
    "quit": "CMD_QUIT",
    "select": "CMD_SELECT",
    "hello": "CMD_HELLO",
    "info": "CMD_INFO",
    "time": "CMD_TIME",
    "reset": "CMD_RESET",
    "client|setname": "CMD_CLIENT_SETNAME",
    "client|getname": "CMD_CLIENT_GETNAME",
    "client|id": "CMD_CLIENT_ID",
    "client|info": "CMD_CLIENT_INFO",
    "client|list": "CMD_CLIENT_LIST",
    "client|kill": "CMD_CLIENT_KILL",
    "client|no-evict": "CMD_CLIENT_NO_EVICT",
    "client|setinfo": "CMD_CLIENT_SETINFO",
    "client|reply": "CMD_CLIENT_REPLY",
    "client|unblock": "CMD_CLIENT_UNBLOCK",
    "client|pause": "CMD_CLIENT_PAUSE",
    "client|unpause": "CMD_CLIENT_UNPAUSE",
    "auth": "CMD_AUTH",
    "acl|whoami": "CMD_ACL_WHOAMI",
    "acl|list": "CMD_ACL_LIST",
    "acl|users": "CMD_ACL_USERS",
    "acl|cat": "CMD_ACL_CAT",
    "acl|genpass": "CMD_ACL_GENPASS",
    "acl|dryrun": "CMD_ACL_DRYRUN",
}

# Local commands that also ask every shard: name -> merge.
LOCAL_MERGES = {
    "info": "MERGE_INFO",  # the shards' Keyspace and keyspace_hits/misses
}

# Split per shard and merged: name -> (command_id, merge, arguments per key).
SPLIT = {
    "mget": ("CMD_MGET", "MERGE_ARRAY_BY_KEY", 1),
    "mset": ("CMD_MSET", "MERGE_ALL_OK", 2),
    "del": ("CMD_DEL", "MERGE_SUM", 1),
    "unlink": ("CMD_UNLINK", "MERGE_SUM", 1),
    "exists": ("CMD_EXISTS", "MERGE_SUM", 1),
    "touch": ("CMD_TOUCH", "MERGE_SUM", 1),
}

# Sent to every shard, the replies merged: name -> (command_id, merge).
FANOUT = {
    "dbsize": ("CMD_DBSIZE", "MERGE_SUM"),
    "keys": ("CMD_OTHER", "MERGE_CONCAT"),
    "flushdb": ("CMD_FLUSH", "MERGE_ALL_OK"),
    "flushall": ("CMD_FLUSH", "MERGE_ALL_OK"),
    "script|load": ("CMD_OTHER", "MERGE_SAME"),
    "script|exists": ("CMD_OTHER", "MERGE_AND_ARRAY"),
    "script|flush": ("CMD_OTHER", "MERGE_ALL_OK"),
    "script|kill": ("CMD_KILL", "MERGE_FIRST_OK"),
    "function|load": ("CMD_OTHER", "MERGE_SAME"),
    "function|delete": ("CMD_OTHER", "MERGE_ALL_OK"),
    "function|flush": ("CMD_OTHER", "MERGE_ALL_OK"),
    "function|kill": ("CMD_KILL", "MERGE_FIRST_OK"),
    "pubsub|channels": ("CMD_OTHER", "MERGE_UNION"),
    "pubsub|numsub": ("CMD_OTHER", "MERGE_PAIR_SUM"),
    "pubsub|numpat": ("CMD_OTHER", "MERGE_MAX"),
    # the proxy's own settings too; SET refused unless allow_config_set = yes
    "config|get": ("CMD_CONFIG_GET", "MERGE_CONFIG_GET"),
    "config|set": ("CMD_CONFIG_SET", "MERGE_ALL_OK"),
}

# Classes with a routing of their own: name -> (class, command_id).
SPECIAL = {
    "scan": ("COMMAND_ITERATE", "CMD_SCAN"),
    "randomkey": ("COMMAND_ITERATE", "CMD_RANDOMKEY"),
    "multi": ("COMMAND_TRANSACTION", "CMD_MULTI"),
    "exec": ("COMMAND_TRANSACTION", "CMD_EXEC"),
    "discard": ("COMMAND_TRANSACTION", "CMD_DISCARD"),
    "watch": ("COMMAND_TRANSACTION", "CMD_WATCH"),
    "unwatch": ("COMMAND_TRANSACTION", "CMD_UNWATCH"),
    "subscribe": ("COMMAND_PUBSUB", "CMD_SUBSCRIBE"),
    "psubscribe": ("COMMAND_PUBSUB", "CMD_PSUBSCRIBE"),
    "unsubscribe": ("COMMAND_PUBSUB", "CMD_UNSUBSCRIBE"),
    "punsubscribe": ("COMMAND_PUBSUB", "CMD_PUNSUBSCRIBE"),
    # no key in Redis's sense, but the channel places it on the ring
    "publish": ("COMMAND_FORWARD", "CMD_PUBLISH"),
}

# Keyed commands the router treats specially (their class follows from the
# keys as usual): name -> command_id.
KEYED_IDS = {
    "eval": "CMD_EVAL", "evalsha": "CMD_EVAL", "eval_ro": "CMD_EVAL",
    "evalsha_ro": "CMD_EVAL", "fcall": "CMD_EVAL", "fcall_ro": "CMD_EVAL",
    # blocking: sent over a connection reserved for the client
    "blpop": "CMD_BLOCK_LAST", "brpop": "CMD_BLOCK_LAST",
    "bzpopmin": "CMD_BLOCK_LAST", "bzpopmax": "CMD_BLOCK_LAST",
    "brpoplpush": "CMD_BLOCK_LAST", "blmove": "CMD_BLOCK_LAST",
    "blmpop": "CMD_BLOCK_FIRST", "bzmpop": "CMD_BLOCK_FIRST",
    "xread": "CMD_XREAD", "xreadgroup": "CMD_XREAD",
    # the other databases hold the proxy's hidden records (store_db)
    "copy": "CMD_COPY",
    # across shards only with cross_shard = atomic (two-phase commit)
    "msetnx": "CMD_MSETNX",
}

# How the router runs each command: its route handler (command_route in
# command.h). By command id where the id asks for a routing of its own,
# else by class.
ROUTE_BY_ID = {
    "CMD_TIME": "ROUTE_ANY_SHARD",      # any shard knows the time
    "CMD_COMMAND": "ROUTE_ANY_SHARD",   # and the command set
    "CMD_PING": "ROUTE_PING",           # answered as a subscriber when subscribed
    "CMD_RESET": "ROUTE_RESET",
    "CMD_FLUSH": "ROUTE_FLUSH",         # refused with allow_flush = no
    "CMD_EVAL": "ROUTE_SCRIPT",         # without keys: script_default_shard
    "CMD_BLOCK_LAST": "ROUTE_BLOCKING",
    "CMD_BLOCK_FIRST": "ROUTE_BLOCKING",
    "CMD_XREAD": "ROUTE_BLOCKING",
    "CMD_PUBLISH": "ROUTE_CHANNEL",
    "CMD_SCAN": "ROUTE_SCAN",
    "CMD_RANDOMKEY": "ROUTE_RANDOMKEY",
    "CMD_COPY": "ROUTE_COPY",
    # writes split per shard: by cross_shard, refused, atomic or best-effort
    "CMD_MSET": "ROUTE_SPLIT_WRITE",
    "CMD_DEL": "ROUTE_SPLIT_WRITE",
    "CMD_UNLINK": "ROUTE_SPLIT_WRITE",
    "CMD_MSETNX": "ROUTE_ATOMIC_ONLY",
    # not behind the script it stops, on the shared connection it runs on
    "CMD_KILL": "ROUTE_KILL",
    "CMD_INFO": "ROUTE_INFO",           # the shards' keyspace and hit counts added
    "CMD_CONFIG_GET": "ROUTE_CONFIG",   # the proxy's settings, then every shard's
    "CMD_CONFIG_SET": "ROUTE_CONFIG",   # refused with allow_config_set = no
}
ROUTE_BY_CLASS = {
    "COMMAND_FORWARD": "ROUTE_KEYS",
    "COMMAND_SAME_SHARD": "ROUTE_KEYS",
    "COMMAND_SPLIT": "ROUTE_SPLIT",
    "COMMAND_LOCAL": "ROUTE_LOCAL",
    "COMMAND_FANOUT": "ROUTE_FANOUT",
    "COMMAND_UNSUPPORTED": "ROUTE_UNSUPPORTED",
    "COMMAND_TRANSACTION": "ROUTE_TRANSACTION",
    "COMMAND_PUBSUB": "ROUTE_PUBSUB",
    "COMMAND_LOCK": "ROUTE_LOCK",
}

# Flags the router's gates read (COMMAND_FLAG_* in command.h). Allowed
# before AUTH is Redis's own no_auth flag; the rest are ringproxy's.
WHILE_SUBSCRIBED = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "ping", "quit",
                    "reset"}
# CLIENT PAUSE WRITE holds what Redis holds: its write flag, and the
# commands Redis flags may_replicate, which COMMAND does not show (EVAL,
# EVALSHA, FCALL, PUBLISH, PFCOUNT, SCRIPT LOAD and FLUSH); EXEC, whose
# queued commands may write; and the lock commands that change a lock.
# CLIENT UNPAUSE runs during any pause, so that one can be ended.
PAUSED_BY_WRITE_FLAGS = {"write", "may_replicate"}
PAUSED_BY_WRITE = {"exec", "eval", "evalsha", "fcall", "publish", "spublish", "pfcount",
                   "script|load", "script|flush", "lock.acquire", "lock.extend",
                   "lock.release"}
NEVER_PAUSED = {"client|unpause"}
# Not queued between MULTI and EXEC: they run at once, as in Redis.
RUNS_IN_MULTI = {"multi", "exec", "discard", "watch", "quit", "reset"}
# Local commands a transaction may queue (the shard answers them in EXEC);
# every other local, fan-out, shard-by-shard, pub/sub or unsupported
# command is refused between MULTI and EXEC.
QUEUED_LOCAL = {"ping", "echo", "time"}
NOT_QUEUED_CLASSES = {"COMMAND_LOCAL", "COMMAND_FANOUT", "COMMAND_ITERATE", "COMMAND_PUBSUB",
                      "COMMAND_UNSUPPORTED", "COMMAND_LOCK"}

# Not supported: -ERR unsupported command. Their key positions are kept
# right all the same.
UNSUPPORTED = {
    # sharded pub/sub (SPUBLISH, SSUBSCRIBE) has no ring placement yet
    "ssubscribe", "sunsubscribe", "spublish",
    # WAIT counts replicas that acknowledged this connection's writes; the
    # client's writes travel on shared connections, so no shard can answer
    "wait",
    # connection state the proxy does not track
    "monitor",
    # server administration, replication and cluster
    "shutdown", "swapdb", "move", "save", "bgsave",
    "bgrewriteaof", "replicaof", "slaveof", "sync", "psync", "replconf",
    "failover", "readonly", "readwrite", "asking", "lastsave", "role",
    "lolwut", "debug", "pfselftest", "pfdebug",
    # moves keys between servers behind the ring's back
    "migrate", "restore-asking",
}

# Container commands: name -> (class of the container row, its id, default
# class of its subcommands). Subcommands listed in LOCAL, FANOUT, SUB_CLASS
# or UNSUPPORTED_SUBS override the default.
CONTAINERS = {
    "client": ("COMMAND_LOCAL", "CMD_CLIENT", "COMMAND_UNSUPPORTED"),
    "command": ("COMMAND_LOCAL", "CMD_COMMAND", "COMMAND_LOCAL"),
    "object": ("COMMAND_FORWARD", "CMD_OTHER", "COMMAND_FORWARD"),
    "xinfo": ("COMMAND_FORWARD", "CMD_OTHER", "COMMAND_FORWARD"),
    "xgroup": ("COMMAND_FORWARD", "CMD_OTHER", "COMMAND_FORWARD"),
    "memory": ("COMMAND_FORWARD", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    "script": ("COMMAND_FANOUT", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    "function": ("COMMAND_FANOUT", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    "pubsub": ("COMMAND_FANOUT", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    # users come from proxy.ini: the subcommands that would change them
    # are refused with a reason (CMD_ACL), the others answered (LOCAL)
    "acl": ("COMMAND_LOCAL", "CMD_ACL", "COMMAND_LOCAL"),
    "cluster": ("COMMAND_UNSUPPORTED", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    "config": ("COMMAND_FANOUT", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    "latency": ("COMMAND_UNSUPPORTED", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    "module": ("COMMAND_UNSUPPORTED", "CMD_OTHER", "COMMAND_UNSUPPORTED"),
    # the proxy's own slow log (proxy/slowlog.c), not the shards'
    "slowlog": ("COMMAND_LOCAL", "CMD_SLOWLOG", "COMMAND_LOCAL"),
}
SUB_CLASS = {
    "memory|usage": "COMMAND_FORWARD",
    # HELP of a keyed container: nothing to route by
    "object|help": "COMMAND_UNSUPPORTED",
    "xinfo|help": "COMMAND_UNSUPPORTED",
    "xgroup|help": "COMMAND_UNSUPPORTED",
}

# Subcommands of a later Redis that clients send on connect (redis-py 5,
# go-redis 9 send CLIENT SETINFO): container, name, arity (Redis 7.2's).
LATER_SUBCOMMANDS = [
    ("client", "client|setinfo", 4),
]

# The proxy's own container command (not a Redis command).
PROXY_SUBCOMMANDS = [
    # name, arity, id, key position (0: none)
    ("proxy|rebalance", -2, "CMD_PROXY_REBALANCE", 0),
    ("proxy|reload", 2, "CMD_PROXY_RELOAD", 0),
    ("proxy|ring", 3, "CMD_PROXY_RING", 2),
    ("proxy|shards", 2, "CMD_PROXY_SHARDS", 0),
]

# The proxy's lock commands (not Redis commands): quorum locks over the
# lock shards' hidden store, answered by proxy/lock.c. The lock name is not
# a ring key: a lock lives on a majority of the lock shards.
LOCK_COMMANDS = [
    # name, arity, id
    ("lock.acquire", -3, "CMD_LOCK_ACQUIRE"),
    ("lock.extend", 4, "CMD_LOCK_EXTEND"),
    ("lock.info", 2, "CMD_LOCK_INFO"),
    ("lock.release", 3, "CMD_LOCK_RELEASE"),
]

# ACL categories of the rows that are not in the server's COMMAND reply
# (Redis's own rows carry theirs, as COMMAND INFO lists them): the proxy's
# commands, and the later Redis's subcommands (as Redis 7.2 lists them).
EXTRA_CATEGORIES = {
    "proxy": ["@slow"],
    "proxy|shards": ["@slow"],
    "proxy|ring": ["@slow"],
    "proxy|reload": ["@admin", "@slow", "@dangerous"],
    "proxy|rebalance": ["@admin", "@slow", "@dangerous"],
    "lock.acquire": ["@write", "@slow"],
    "lock.extend": ["@write", "@slow"],
    "lock.release": ["@write", "@slow"],
    "lock.info": ["@read", "@slow"],
    "client|setinfo": ["@slow", "@connection"],
}

# Keys that first/last/step cannot describe: name -> (rule, first_key,
# numkeys check). first_key is the index the rule starts from (see
# command_keys_rule in command.h).
SPECIAL_KEYS = {
    "eval": ("KEYS_NUMKEYS", 2, "NUMKEYS_EVAL"),
    "evalsha": ("KEYS_NUMKEYS", 2, "NUMKEYS_EVAL"),
    "eval_ro": ("KEYS_NUMKEYS", 2, "NUMKEYS_EVAL"),
    "evalsha_ro": ("KEYS_NUMKEYS", 2, "NUMKEYS_EVAL"),
    "fcall": ("KEYS_NUMKEYS", 2, "NUMKEYS_FCALL"),
    "fcall_ro": ("KEYS_NUMKEYS", 2, "NUMKEYS_FCALL"),
    "lmpop": ("KEYS_NUMKEYS", 1, "NUMKEYS_POP"),
    "zmpop": ("KEYS_NUMKEYS", 1, "NUMKEYS_POP"),
    "sintercard": ("KEYS_NUMKEYS", 1, "NUMKEYS_SINTERCARD"),
    "zdiff": ("KEYS_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "zinter": ("KEYS_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "zunion": ("KEYS_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "zintercard": ("KEYS_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "zdiffstore": ("KEYS_DEST_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "zinterstore": ("KEYS_DEST_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "zunionstore": ("KEYS_DEST_NUMKEYS", 1, "NUMKEYS_ZSET"),
    "blmpop": ("KEYS_TIMEOUT_NUMKEYS", 2, "NUMKEYS_POP"),
    "bzmpop": ("KEYS_TIMEOUT_NUMKEYS", 2, "NUMKEYS_POP"),
    "xread": ("KEYS_STREAMS", 1, None),
    "xreadgroup": ("KEYS_STREAMS", 4, None),
    "sort": ("KEYS_SORT", 1, None),
    "migrate": ("KEYS_MIGRATE", 3, None),
    "georadius": ("KEYS_GEORADIUS", 1, None),
    "georadiusbymember": ("KEYS_GEORADIUS", 1, None),
}
# Movable-keys commands whose only key is argv[1]: SORT_RO has no STORE, and
# the BY / GET patterns it reads are not keys to route by.
SINGLE_KEY_MOVABLE = {"sort_ro"}

# What a command does with its keys, for the %R~ / %W~ key permissions of
# ACL users, comes from Redis's key specs (COMMAND's 9th field), folded as
# Redis's ACL folds them: ACCESS is a read; INSERT, DELETE, UPDATE a write;
# neither (EXISTS, TYPE) only names the key. A row holds what it does with
# its first key and with the others, which is all the specs of Redis 7.0
# ask for: one spec for every key, or a first key that differs from the
# rest (COPY reads its source and writes its destination, SUNIONSTORE
# writes its destination and reads the sources). The script stops on a
# command the two cannot describe.
ACCESS_OF_BITS = {
    (False, False): "KEY_ACCESS_NAME",
    (True, False): "KEY_ACCESS_READ",
    (False, True): "KEY_ACCESS_WRITE",
    (True, True): "KEY_ACCESS_READ_WRITE",
}
WRITE_KEY_FLAGS = {"insert", "delete", "update"}
# Commands whose keys' flags depend on their arguments (VARIABLE_FLAGS):
# worked out per request by command_key_access_of (proxy/command.c).
VARIABLE_ACCESS = {
    "set": "KEY_ACCESS_SET",
    "bitfield": "KEY_ACCESS_BITFIELD",
}
# Specs that are not keys of the proxy's key rules: SORT's BY and GET
# patterns (an "unknown" spec Redis's sortGetKeys does not count either).
# name -> (first key, other keys).
ACCESS_OVERRIDES = {
    "sort": ("KEY_ACCESS_READ", "KEY_ACCESS_WRITE"),  # the key, then STORE's
    "sort_ro": ("KEY_ACCESS_READ", "KEY_ACCESS_READ"),
}

# Arguments Redis lists in key positions that are shard channels, not keys
# (COMMAND GETKEYS agrees: "The command has no key arguments").
NOT_KEYS = {"spublish", "ssubscribe", "sunsubscribe"}


# --- reading COMMAND ------------------------------------------------------

def resp_command(sock_file, *args):
    out = b"*%d\r\n" % len(args)
    for arg in args:
        arg = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    sock_file.write(out)
    sock_file.flush()
    return resp_read(sock_file)


def resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RuntimeError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise RuntimeError("unexpected reply type %r" % kind)


def fetch_commands(sock_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    f = sock.makefile("rwb")
    version = resp_command(f, "INFO", "server")
    version = [l for l in version.split("\r\n") if l.startswith("redis_version:")]
    commands = resp_command(f, "COMMAND")
    sock.close()
    return version[0].split(":")[1], commands


def start_server(tmpdir):
    server = os.environ.get("REDIS_SERVER", "redis-server")
    if not shutil.which(server):
        sys.exit("command_gen: %s not found (set REDIS_SERVER)" % server)
    sock_path = os.path.join(tmpdir, "redis.sock")
    proc = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", sock_path, "--save", "",
         "--appendonly", "no", "--dir", tmpdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(sock_path):
            return proc, sock_path
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    sys.exit("command_gen: redis-server did not start")


# --- building rows ----------------------------------------------------------

class Row:
    def __init__(self, name, arity):
        self.name = name
        self.arity = arity
        self.cls = None
        self.cmd_id = "CMD_OTHER"
        self.merge = "MERGE_NONE"
        self.rule = "KEYS_NONE"
        self.first = self.last = self.step = 0
        self.split_step = 0
        self.numkeys = None
        self.subs = None  # name of the subcommand array
        self.route = None
        self.flags = []
        self.categories = EXTRA_CATEGORIES.get(name, [])
        self.first_access = self.other_access = "KEY_ACCESS_NAME"


def fields(entry):
    """COMMAND reply entry -> dict of the fields used here."""
    return {
        "name": entry[0],
        "arity": entry[1],
        "flags": set(entry[2]),
        "first": entry[3],
        "last": entry[4],
        "step": entry[5],
        "subcommands": entry[9] if len(entry) > 9 else [],
        "categories": entry[6],
        "key_specs": [spec_fields(spec) for spec in entry[8]] if len(entry) > 8 else [],
    }


def spec_fields(spec):
    """A key spec of COMMAND (a RESP2 key/value list) -> dict; begin_search
    and find_keys as dicts too."""
    d = dict(zip(spec[0::2], spec[1::2]))
    for part in ("begin_search", "find_keys"):
        kv = dict(zip(d[part][0::2], d[part][1::2]))
        if isinstance(kv.get("spec"), list):
            kv["spec"] = dict(zip(kv["spec"][0::2], kv["spec"][1::2]))
        d[part] = kv
    d["flags"] = {f.lower() for f in d["flags"]}
    return d


def spec_access(name, spec):
    """What a key spec's keys are used for: a KEY_ACCESS_* name."""
    flags = spec["flags"]
    if "variable_flags" in flags:
        if name not in VARIABLE_ACCESS:
            sys.exit("command_gen: %s has variable key flags: add it to VARIABLE_ACCESS" % name)
        return VARIABLE_ACCESS[name]
    return ACCESS_OF_BITS[("access" in flags, bool(flags & WRITE_KEY_FLAGS))]


def key_access(cmd, row):
    """Sets row.first_access and row.other_access from the key specs."""
    name = row.name
    if row.rule == "KEYS_NONE":
        return
    if name in ACCESS_OVERRIDES:
        row.first_access, row.other_access = ACCESS_OVERRIDES[name]
        return
    specs = [spec for spec in cmd["key_specs"] if "not_key" not in spec["flags"]]
    if not specs:
        sys.exit("command_gen: %s has keys but no key spec" % name)
    accesses = [spec_access(name, spec) for spec in specs]
    row.first_access = accesses[0]
    rest = set(accesses[1:]) or {accesses[0]}
    if len(rest) != 1:
        sys.exit("command_gen: %s: its keys after the first differ (%s): describe them"
                 % (name, ", ".join(sorted(rest))))
    row.other_access = rest.pop()
    if row.other_access != row.first_access:
        # the first spec must be the first key the proxy finds, and only it
        search, find = specs[0]["begin_search"], specs[0]["find_keys"]
        single = (search["type"] == "index" and search["spec"]["index"] == row.first
                  and find["type"] == "range" and find["spec"]["lastkey"] == 0)
        if not single:
            sys.exit("command_gen: %s: its first key spec is not its first key alone" % name)


def key_rule(cmd, row):
    name = row.name
    if name in SPECIAL_KEYS:
        row.rule, row.first, row.numkeys = SPECIAL_KEYS[name]
        if row.rule == "KEYS_GEORADIUS" or row.rule == "KEYS_SORT":
            row.last, row.step = 1, 1
        return True  # may have several keys
    if "movablekeys" in cmd["flags"] and name not in SINGLE_KEY_MOVABLE:
        sys.exit("command_gen: %s has movable keys: add it to SPECIAL_KEYS" % name)
    if cmd["first"] == 0 or name in NOT_KEYS:
        return False
    row.rule = "KEYS_RANGE"
    row.first, row.last, row.step = cmd["first"], cmd["last"], cmd["step"]
    return row.last != row.first


def classify(cmd, container=None):
    row = Row(cmd["name"], cmd["arity"])
    name = row.name
    if cmd.get("categories"):
        row.categories = cmd["categories"]
    several_keys = key_rule(cmd, row)
    key_access(cmd, row)
    if name in CONTAINERS:
        row.cls, row.cmd_id, _ = CONTAINERS[name]
    elif name in LOCAL:
        row.cls, row.cmd_id = "COMMAND_LOCAL", LOCAL[name]
        row.merge = LOCAL_MERGES.get(name, "MERGE_NONE")
    elif name in SPLIT:
        row.cls = "COMMAND_SPLIT"
        row.cmd_id, row.merge, row.split_step = SPLIT[name]
    elif name in FANOUT:
        row.cls = "COMMAND_FANOUT"
        row.cmd_id, row.merge = FANOUT[name]
    elif name in SPECIAL:
        row.cls, row.cmd_id = SPECIAL[name]
    elif name in UNSUPPORTED:
        row.cls = "COMMAND_UNSUPPORTED"
    elif name in SUB_CLASS:
        row.cls = SUB_CLASS[name]
    elif container is not None:
        row.cls = CONTAINERS[container][2]
        if row.cls == "COMMAND_LOCAL":
            row.cmd_id = CONTAINERS[container][1]
    elif several_keys:
        row.cls = "COMMAND_SAME_SHARD"
    elif row.rule != "KEYS_NONE":
        row.cls = "COMMAND_FORWARD"
    else:
        sys.exit("command_gen: keyless command %s is unclassified" % name)
    if (row.cls == "COMMAND_FORWARD" and row.rule == "KEYS_NONE" and name not in CONTAINERS
            and row.cmd_id != "CMD_PUBLISH"):
        sys.exit("command_gen: %s has no key to forward by: classify it" % name)
    if name in KEYED_IDS:
        if row.cls not in ("COMMAND_FORWARD", "COMMAND_SAME_SHARD"):
            sys.exit("command_gen: %s is in KEYED_IDS but not keyed" % name)
        row.cmd_id = KEYED_IDS[name]
    route_and_flags(row, cmd["flags"])
    return row


def route_and_flags(row, redis_flags):
    """The route handler and gate flags of a classified row."""
    row.route = ROUTE_BY_ID.get(row.cmd_id) or ROUTE_BY_CLASS.get(row.cls)
    if row.route is None:
        sys.exit("command_gen: %s (%s) has no route handler" % (row.name, row.cls))
    flags = []
    if "no_auth" in redis_flags:
        flags.append("COMMAND_FLAG_NO_AUTH")
    if row.name in WHILE_SUBSCRIBED:
        flags.append("COMMAND_FLAG_WHILE_SUBSCRIBED")
    if row.name in RUNS_IN_MULTI:
        flags.append("COMMAND_FLAG_RUNS_IN_MULTI")
    elif row.cls in NOT_QUEUED_CLASSES and row.name not in QUEUED_LOCAL:
        flags.append("COMMAND_FLAG_NOT_QUEUED")
    if "no_multi" in redis_flags and row.name not in RUNS_IN_MULTI:
        flags.append("COMMAND_FLAG_NO_MULTI")
    if redis_flags & PAUSED_BY_WRITE_FLAGS or row.name in PAUSED_BY_WRITE:
        flags.append("COMMAND_FLAG_PAUSED_BY_WRITE")
    if row.name in NEVER_PAUSED:
        flags.append("COMMAND_FLAG_NEVER_PAUSED")
    if (row.route == "ROUTE_KEYS" and row.cls == "COMMAND_FORWARD" and row.rule == "KEYS_RANGE"
            and row.first == 1 and row.last == 1):
        flags.append("COMMAND_FLAG_SINGLE_KEY")
    row.flags = flags


def row_cells(row):
    """(macro, cells) of one table row; see the macros in command.c."""
    macro, cells = row_shape(row)
    if not row.subs:
        cells += [row.first_access, row.other_access]
    return macro, cells + [row.route, " | ".join(row.flags) or "0", acl_expression(row)]


def acl_expression(row):
    """The row's ACL categories as C: ACL_CAT_READ | ACL_CAT_FAST ..."""
    if not row.categories:
        sys.exit("command_gen: %s has no ACL category" % row.name)
    return " | ".join("ACL_CAT_" + c.lstrip("@").upper() for c in row.categories)


def row_shape(row):
    """(macro, cells) of a row without its route and flags."""
    name = '"%s"' % row.name
    arity = str(row.arity)
    if row.subs:
        return "CONTAINER_ROW", [name, arity, row.cls, row.cmd_id, row.subs]
    if row.cls == "COMMAND_SPLIT":
        return "SPLIT_ROW", [name, arity, row.cmd_id, row.merge, row.rule, str(row.first),
                             str(row.last), str(row.step), str(row.split_step)]
    if row.cls == "COMMAND_LOCAL":
        return "LOCAL_ROW", [name, arity, row.cmd_id, row.merge, row.rule, str(row.first),
                             str(row.last), str(row.step)]
    if row.numkeys:
        return "NUMKEYS_ROW", [name, arity, row.cls, row.cmd_id, row.rule, str(row.first),
                               row.numkeys]
    if row.cmd_id != "CMD_OTHER" or row.merge != "MERGE_NONE":
        return "ID_ROW", [name, arity, row.cls, row.cmd_id, row.merge, row.rule, str(row.first),
                          str(row.last), str(row.step)]
    return "ROW", [name, arity, row.cls, row.rule, str(row.first), str(row.last), str(row.step)]


def format_rows(rows):
    """C lines for rows, columns aligned among rows of the same macro."""
    cells = [row_cells(row) for row in rows]
    # the first column (macro and name) lines up across all rows, the
    # others among rows of the same macro
    head = max(len(macro) + len(values[0]) for macro, values in cells) + 3
    widths = {}
    for macro, values in cells:
        w = widths.setdefault(macro, [0] * len(values))
        for i, value in enumerate(values):
            w[i] = max(w[i], len(value))
    lines = []
    for macro, values in cells:
        w = widths[macro]
        parts = [(macro + "(" + values[0] + ",").ljust(head)]
        for i, value in enumerate(values):
            if i == 0:
                continue
            last = i == len(values) - 1
            text = value if last else value + ","
            numeric = value.lstrip("-").isdigit()
            if last:
                parts.append(text)  # the ACL categories
            elif i == len(values) - 2:
                parts.append(text)  # the flags
            elif numeric:
                parts.append(text.rjust(w[i] + 1))
            else:
                parts.append(text.ljust(w[i] + 1))
        lines.append("    %s%s)," % (parts[0], " ".join(parts[1:])))
    return lines


def build_rows(commands):
    """Top-level rows (sorted, PROXY included) and (array name, sub rows)."""
    rows = []
    sub_arrays = []
    for entry in sorted(commands, key=lambda e: e[0]):
        cmd = fields(entry)
        row = classify(cmd)
        if cmd["subcommands"]:
            subs = [classify(fields(s), cmd["name"]) for s in cmd["subcommands"]]
            for container, name, arity in LATER_SUBCOMMANDS:
                if container == cmd["name"]:
                    later = {"name": name, "arity": arity, "flags": set(), "first": 0,
                             "last": 0, "step": 0, "subcommands": [], "key_specs": []}
                    subs.append(classify(later, container))
            row.subs = "%s_subcommands" % cmd["name"].replace("-", "_")
            sub_arrays.append((row.subs, sorted(subs, key=lambda r: r.name)))
        rows.append(row)
    proxy = Row("proxy", -2)
    proxy.cls, proxy.cmd_id, proxy.subs = "COMMAND_LOCAL", "CMD_PROXY", "proxy_subcommands"
    route_and_flags(proxy, set())
    proxy_subs = []
    for name, arity, cmd_id, key in PROXY_SUBCOMMANDS:
        sub = Row(name, arity)
        sub.cls, sub.cmd_id = "COMMAND_LOCAL", cmd_id
        if key:
            sub.rule, sub.first, sub.last, sub.step = "KEYS_RANGE", key, key, 1
        route_and_flags(sub, set())
        proxy_subs.append(sub)
    sub_arrays.append((proxy.subs, proxy_subs))
    rows.append(proxy)
    for name, arity, cmd_id in LOCK_COMMANDS:
        lock = Row(name, arity)
        lock.cls, lock.cmd_id = "COMMAND_LOCK", cmd_id
        route_and_flags(lock, set())
        rows.append(lock)
    rows.sort(key=lambda r: r.name)
    return rows, sub_arrays


def emit(version, commands, out):
    rows, sub_arrays = build_rows(commands)
    w = out.write
    w("/* The command table of proxy/command.c: every command of redis-server %s\n"
      " * plus ringproxy's own PROXY and LOCK.*, sorted by name. Written by proxy/command_gen.py\n"
      " * from the server's COMMAND reply and the routing policy in that script:\n"
      " * change the script and run it again rather than editing this file.\n"
      " * Row shapes are the macros defined in command.c; each row ends with what\n"
      " * it does with its first key and the others, the router's handler, the\n"
      " * command's flags and its ACL categories. */\n\n" % version)
    w("/* clang-format off */\n")
    for array, subs in sorted(sub_arrays):
        w("static const command %s[] = {\n" % array)
        for line in format_rows(subs):
            w(line + "\n")
        w("};\n\n")
    w("static const command command_rows[] = {\n")
    for line in format_rows(rows):
        w(line + "\n")
    w("};\n")
    w("/* clang-format on */\n")
    ncommands = len(rows)
    nsubs = sum(len(s) for _, s in sub_arrays)
    return ncommands, nsubs


# --- docs/commands.md, the command reference ------------------------------

# How each class reads in docs/commands.md; tests/integration/
# test_command_reference.c holds the same words and checks the file against
# the compiled table.
CLASS_WORDS = {
    "COMMAND_FORWARD": "forwarded",
    "COMMAND_SPLIT": "split",
    "COMMAND_SAME_SHARD": "same shard",
    "COMMAND_LOCAL": "local",
    "COMMAND_FANOUT": "fan-out",
    "COMMAND_UNSUPPORTED": "unsupported",
    "COMMAND_ITERATE": "shard by shard",
    "COMMAND_TRANSACTION": "transaction",
    "COMMAND_PUBSUB": "pub/sub",
    "COMMAND_LOCK": "lock",
}

MERGE_NOTES = {
    "MERGE_ARRAY_BY_KEY": "replies merged in key order",
    "MERGE_ALL_OK": "OK when every shard is OK",
    "MERGE_SUM": "sum of the shards' replies",
    "MERGE_CONCAT": "every shard's keys",
    "MERGE_UNION": "every shard's channels, each once",
    "MERGE_SAME": "every shard must give the same reply",
    "MERGE_AND_ARRAY": "1 when it exists on every shard",
    "MERGE_FIRST_OK": "the shard that was running it answers",
    "MERGE_PAIR_SUM": "counts summed over the shards",
    "MERGE_MAX": "the largest count of a shard",
    "MERGE_CONFIG_GET": "the proxy's settings, then the first shard's values",
    "MERGE_INFO": "the proxy's own, with the shards' keyspace summed",
}

ID_NOTES = {
    "CMD_TIME": "asked of any shard",
    "CMD_COMMAND": "asked of any shard",
    "CMD_EVAL": "without keys: `script_default_shard`",
    "CMD_PUBLISH": "to the shard owning the channel",
    "CMD_FLUSH": "refused with `allow_flush = no`",
    "CMD_CONFIG_GET": "proxy.ini keys, then the shards' parameters",
    "CMD_CONFIG_SET": "every shard; refused with `allow_config_set = no`",
    "CMD_BLOCK_LAST": "blocks on a reserved connection",
    "CMD_BLOCK_FIRST": "blocks on a reserved connection",
    "CMD_XREAD": "with BLOCK: on a reserved connection",
    "CMD_SCAN": "the cursor names the shard",
    "CMD_RANDOMKEY": "a random shard, then the others",
    "CMD_MULTI": "on the first key's shard",
    "CMD_WATCH": "binds the client to the keys' shard",
    "CMD_SUBSCRIBE": "on the channel's shard",
    "CMD_PSUBSCRIBE": "on every shard",
    "CMD_RESET": "also ends transactions and subscriptions",
    "CMD_CLIENT_INFO": "the proxy's own clients",
    "CMD_CLIENT_LIST": "the proxy's own clients",
    "CMD_CLIENT_KILL": "the proxy's own clients",
    "CMD_CLIENT_NO_EVICT": "accepted; nothing to evict",
    "CMD_CLIENT_SETINFO": "shown in CLIENT LIST, as Redis 7.2",
    "CMD_CLIENT_REPLY": "ON, OFF, SKIP",
    "CMD_CLIENT_UNBLOCK": "sent to the blocked command's shard",
    "CMD_CLIENT_PAUSE": "the proxy's own clients; shards untouched",
    "CMD_CLIENT_UNPAUSE": "the proxy's own clients",
    "CMD_HELLO": "2 or 3: RESP3 replies come from RESP3 shard connections",
    "CMD_LOCK_ACQUIRE": "quorum lock on the lock shards: a fencing token or nil",
    "CMD_LOCK_RELEASE": "1 when the token held the lock",
    "CMD_LOCK_EXTEND": "1 when a majority extended it in time",
    "CMD_LOCK_INFO": "holder token and remaining ttl, or nil",
    "CMD_MSETNX": "keys on one shard, else atomic across shards with `cross_shard = atomic`",
    "CMD_KILL": "over a connection of its own to each shard; the shard running it answers",
    "CMD_ACL": "refused: users come from proxy.ini's [users] (docs/acl.md)",
    "CMD_ACL_WHOAMI": "the client's user",
    "CMD_ACL_LIST": "proxy.ini's users, passwords as #sha256",
    "CMD_ACL_USERS": "proxy.ini's users",
    "CMD_ACL_CAT": "Redis's categories, and their commands",
    "CMD_ACL_GENPASS": "from /dev/urandom",
    "CMD_ACL_DRYRUN": "checks a user's permissions for a command",
}


UNSUPPORTED_NOTES = {
    "wait": "the client's writes share connections with others'",
    "monitor": "would need every shard's stream",
    "ssubscribe": "sharded pub/sub", "sunsubscribe": "sharded pub/sub",
    "spublish": "sharded pub/sub",
    "migrate": "keys move only with the ring (rebalancing)",
    "move": "database 0 only", "swapdb": "database 0 only",
    "client|tracking": "client-side caching: invalidations would come from every shard",
}


MARKDOWN_INTRO = """\
# Command reference

Every command of Redis %(version)s and how ringproxy treats it:

| class | meaning |
|---|---|
| **forwarded** | sent to the shard owning its key (a keyless one to any shard) |
| **split** | split per shard, the replies merged (multi-key commands) |
| **same shard** | its keys must live on one shard, else `-CROSSSLOT` |
| **fan-out** | sent to every shard, the replies merged |
| **local** | answered by the proxy |
| **shard by shard** | walks the shards one after the other (SCAN, RANDOMKEY) |
| **transaction** | MULTI, EXEC, DISCARD, WATCH, UNWATCH |
| **pub/sub** | subscriptions |
| **unsupported** | `-ERR unsupported command ...`; the connection stays usable |

What a client can rely on for each kind of command is in
[semantics.md](semantics.md). This file is written by
`python3 proxy/command_gen.py --markdown > docs/commands.md` from the same
routing policy as the proxy's command table (`proxy/command_table.inc`), and
`tests/integration/test_command_reference.c` checks it against the compiled
table (one row per command and subcommand, with its class) and against a
running proxy (every unsupported command, and only those, answers
`-ERR unsupported command`). Do not edit the table by hand: change the
policy in `proxy/command_gen.py`, then write `proxy/command_table.inc` and
this file again.

"""


def markdown(version, commands, out):
    """The whole of docs/commands.md: the introduction, then one row per
    command, a container's subcommands each on their own (and the container
    itself when it runs without one, as COMMAND)."""
    rows, sub_arrays = build_rows(commands)
    subs_of = dict(sub_arrays)
    out.write(MARKDOWN_INTRO % {"version": ".".join(version.split(".")[:2])})
    out.write("| Command | ringproxy | Notes |\n|---|---|---|\n")
    listed = 0
    for row in rows:
        listing = [row]
        if row.subs:
            listing = ([row] if row.arity == -1 else []) + subs_of[row.subs]
        for r in listing:
            name = r.name.replace("|", " ").upper()
            notes = (ID_NOTES.get(r.cmd_id) or MERGE_NOTES.get(r.merge)
                     or UNSUPPORTED_NOTES.get(r.name, ""))
            if r.cls == "COMMAND_SAME_SHARD" and not notes:
                notes = "keys on one shard, else -CROSSSLOT"
            out.write("| `%s` | %s | %s |\n" % (name, CLASS_WORDS[r.cls], notes))
            listed += 1
    return listed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", help="unix socket of a running redis-server")
    parser.add_argument("--markdown", action="store_true",
                        help="write docs/commands.md instead of the C table")
    args = parser.parse_args()
    if args.socket:
        version, commands = fetch_commands(args.socket)
    else:
        tmpdir = tempfile.mkdtemp(prefix="command_gen.")
        proc, sock_path = start_server(tmpdir)
        try:
            version, commands = fetch_commands(sock_path)
        finally:
            proc.terminate()
            proc.wait()
            shutil.rmtree(tmpdir, ignore_errors=True)
    if args.markdown:
        listed = markdown(version, commands, sys.stdout)
        sys.stderr.write("command_gen: %d commands and subcommands of redis-server %s\n"
                         % (listed, version))
        return
    ncommands, nsubs = emit(version, commands, sys.stdout)
    sys.stderr.write("command_gen: %d commands, %d subcommands\n" % (ncommands, nsubs))


if __name__ == "__main__":
    main()
