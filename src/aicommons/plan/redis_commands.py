"""Which Redis 7.0 commands a tenant may not run, and why: data, read from the command table.

An ACL key pattern (`~user1:*`) only constrains commands whose arguments the server knows to be
keys (their `key_specs`); a channel pattern only constrains channel arguments. Every command or
subcommand without key specs in Redis 7.0.15's table (`COMMAND INFO`) is listed below, either in
DENY (it reveals or changes what other tenants have, or the whole server) or in ALLOW (it
touches only the caller's own connection). tests/test_redis_commands.py reads the real server's
table and fails when a keyless command is in neither list, so a new Redis cannot add an
unreviewed way around the key patterns.

Each DENY entry carries a probe (the argv `audit isolation` asks `ACL DRYRUN` about) and the
reason. `-@dangerous` covers the server-admin commands (KEYS, FLUSHALL, INFO, MONITOR, DEBUG,
CLIENT LIST/KILL/PAUSE/NO-EVICT, SLOWLOG, LATENCY, LASTSAVE, SORT — its BY/GET patterns read
any key —, CONFIG, ACL LIST/GETUSER, …); they are listed again by name so that a site which
re-allows part of @dangerous still keeps these denied, and so the audit probes each of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Denied:
    rule: str                 # ACL selector: "scan", "client|tracking", "@dangerous"
    probe: tuple[str, ...]    # argv the audit asks ACL DRYRUN about (never run); {key}: a key of the caller's own
    reason: str


DENY: tuple[Denied, ...] = (
    Denied("@dangerous", ("FLUSHALL",), "server administration: the whole keyspace, config, other clients"),
    # -- keyspace-wide reads and writes: key patterns do not apply to them
    Denied("keys", ("KEYS", "*"), "lists every tenant's key names"),
    Denied("scan", ("SCAN", "0"), "iterates every tenant's key names"),
    Denied("randomkey", ("RANDOMKEY",), "returns another tenant's key name"),
    Denied("dbsize", ("DBSIZE",), "counts every tenant's keys"),
    Denied("flushall", ("FLUSHALL",), "deletes every tenant's keys"),
    Denied("flushdb", ("FLUSHDB",), "deletes every tenant's keys"),
    Denied("swapdb", ("SWAPDB", "0", "1"), "swaps every tenant's keys with another database"),
    Denied("move", ("MOVE", "{key}", "1"), "moves a key into a database the key pattern does not cover"),
    Denied("copy", ("COPY", "{key}", "{key}", "DB", "1"), "copies a key into another database"),
    Denied("select", ("SELECT", "1"), "other databases (only DB 0 is re-allowed)"),
    Denied("sort", ("SORT", "{key}", "BY", "*"), "BY/GET patterns read keys outside the prefix"),
    Denied("sort_ro", ("SORT_RO", "{key}", "GET", "*"), "BY/GET patterns read keys outside the prefix"),
    Denied("migrate", ("MIGRATE", "h", "1", "", "0", "1", "KEYS", "{key}"), "sends keys to any host"),
    Denied("restore", ("RESTORE", "{key}", "0", "payload"), "loads a serialized value (also for other tenants' names)"),
    # -- server-wide information
    Denied("client|tracking", ("CLIENT", "TRACKING", "ON", "BCAST"),
           "BCAST without a prefix pushes every key name any tenant writes"),
    Denied("client|caching", ("CLIENT", "CACHING", "YES"), "only meaningful with tracking"),
    Denied("client|list", ("CLIENT", "LIST"), "every connection: user names, addresses, last command"),
    Denied("client|kill", ("CLIENT", "KILL", "USER", "other"), "disconnects other tenants"),
    Denied("client|pause", ("CLIENT", "PAUSE", "1000"), "stops every tenant's writes"),
    Denied("client|unpause", ("CLIENT", "UNPAUSE"), "server-wide pause control"),
    Denied("client|no-evict", ("CLIENT", "NO-EVICT", "ON"), "exempts a client from the memory limit others live by"),
    Denied("client|unblock", ("CLIENT", "UNBLOCK", "1"), "interrupts another client's blocking call"),
    Denied("memory|stats", ("MEMORY", "STATS"), "server-wide key and memory counts"),
    Denied("memory|doctor", ("MEMORY", "DOCTOR"), "server-wide memory report"),
    Denied("memory|malloc-stats", ("MEMORY", "MALLOC-STATS"), "allocator statistics of the whole server"),
    Denied("memory|purge", ("MEMORY", "PURGE"), "acts on the whole server's allocator"),
    Denied("info", ("INFO", "keyspace"), "keyspace counts, clients, memory of the whole server"),
    Denied("monitor", ("MONITOR",), "streams every command of every tenant"),
    Denied("debug", ("DEBUG", "OBJECT", "{key}"), "server internals; some subcommands crash or block it"),
    Denied("slowlog", ("SLOWLOG", "GET"), "other tenants' commands with their arguments"),
    Denied("latency", ("LATENCY", "LATEST"), "server-wide event timings"),
    Denied("lastsave", ("LASTSAVE",), "server persistence timing"),
    Denied("pubsub", ("PUBSUB", "CHANNELS"), "lists every tenant's channels and subscriber counts"),
    Denied("cluster", ("CLUSTER", "COUNTKEYSINSLOT", "0"), "slot key counts and names (cluster mode)"),
    Denied("wait", ("WAIT", "0", "0"), "replication state of the whole server; blocks on others' writes"),
    # -- scripting and transactions (issue 23): a script or an EXEC runs to its end while every
    #    other client waits (a Lua loop that wrote once cannot be killed: only SHUTDOWN NOSAVE
    #    recovers), and the memory check runs once before it, not per command inside it. No app
    #    given a tenant's Redis needs either (docs/security.md); Langfuse's own user keeps them.
    Denied("@scripting", ("EVAL", "return 1", "0"), "scripts block the whole server while they run"),
    Denied("eval", ("EVAL", "return 1", "0"), "blocks every client while it runs; unkillable once it wrote"),
    Denied("evalsha", ("EVALSHA", "0" * 40, "0"), "runs a cached script: as EVAL"),
    Denied("eval_ro", ("EVAL_RO", "return 1", "0"), "read-only, still blocks every client while it runs"),
    Denied("evalsha_ro", ("EVALSHA_RO", "0" * 40, "0"), "as EVAL_RO"),
    Denied("script|load", ("SCRIPT", "LOAD", "return 1"), "only useful with EVALSHA"),
    Denied("multi", ("MULTI",), "a transaction passes the memory check once, then allocates without bound"),
    Denied("exec", ("EXEC",), "runs a transaction (see multi)"),
    # -- server-global scripting state: one function library and script cache for everybody
    Denied("function", ("FUNCTION", "LIST"), "one function library for all tenants: list, load, flush, kill"),
    Denied("fcall", ("FCALL", "f", "0"), "calls functions another tenant loaded"),
    Denied("fcall_ro", ("FCALL_RO", "f", "0"), "calls functions another tenant loaded"),
    Denied("script|flush", ("SCRIPT", "FLUSH"), "empties the script cache of every tenant"),
    Denied("script|kill", ("SCRIPT", "KILL"), "kills another tenant's running script"),
    Denied("script|debug", ("SCRIPT", "DEBUG", "SYNC"), "synchronous debugging blocks the whole server"),
    Denied("script|exists", ("SCRIPT", "EXISTS", "0" * 40), "tells whether another tenant loaded a script"),
    Denied("acl|log", ("ACL", "LOG"), "other tenants' refused commands and key names"),
    Denied("acl|list", ("ACL", "LIST"), "every user's rules and password hashes"),
    Denied("acl|getuser", ("ACL", "GETUSER", "default"), "another user's rules and password hashes"),
    Denied("acl|users", ("ACL", "USERS"), "lists every tenant's user name"),
)

# Keyless commands a tenant keeps: each acts on the caller's own connection or returns only
# fixed server facts.
ALLOW: dict[str, str] = {
    "acl|cat": "category names", "acl|genpass": "random bytes", "acl|help": "help text",
    "acl|whoami": "the caller's own name", "asking": "cluster redirect flag of this connection",
    "auth": "this connection's login", "hello": "this connection's protocol", "reset": "this connection",
    "quit": "this connection", "ping": "this connection", "echo": "this connection",
    "readonly": "this connection (cluster)", "readwrite": "this connection (cluster)",
    "client|getname": "this connection", "client|setname": "this connection", "client|id": "this connection",
    "client|info": "this connection only", "client|reply": "this connection",
    "client|getredir": "this connection's tracking target", "client|trackinginfo": "this connection",
    "client|help": "help text", "command|count": "the command table", "command|docs": "the command table",
    "command|getkeys": "the command table", "command|getkeysandflags": "the command table",
    "command|help": "help text", "command|info": "the command table", "command|list": "the command table",
    "config|help": "help text", "memory|help": "help text", "module|help": "help text", "object|help": "help text",
    "xgroup|help": "help text", "xinfo|help": "help text",
    "discard": "this connection's transaction", "unwatch": "this connection's transaction",
    "time": "the clock", "lolwut": "version art",
    "subscribe": "channel-checked", "psubscribe": "channel-checked (pattern must fit &prefix*)",
    "unsubscribe": "this connection", "punsubscribe": "this connection", "publish": "channel-checked",
}


def probe_argv(d: Denied, own_key: str) -> tuple[str, ...]:
    return tuple(own_key if a == "{key}" else a for a in d.probe)


def denied_rules() -> list[str]:
    """The `-…` ACL rules, in table order."""
    return ["-" + d.rule for d in DENY]
