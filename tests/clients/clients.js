// Real clients through ringproxy, as their users call them: ioredis 5,
// node-redis 4 and node-redis 5 speaking RESP3. Run by tests/clients/run.sh
// against a proxy and shards it started (RINGPROXY_PORT); each step prints
// "ok - <step>", and the first failure ends the run with exit status 1.
'use strict';

const assert = require('node:assert/strict');

// Which clients run (CLIENTS, default all three) and where node-redis 4
// comes from (REDIS4_MODULE: the npm alias, or Debian's package 'redis').
const clients = (process.env.CLIENTS || 'ioredis,redis4,redis5').split(',');
const Redis = clients.includes('ioredis') ? require('ioredis') : null;
const redis4 = clients.includes('redis4') ? require(process.env.REDIS4_MODULE || 'redis4') : null;
const redis5 = clients.includes('redis5') ? require('redis5') : null;

const port = Number(process.env.RINGPROXY_PORT);
const url = `redis://127.0.0.1:${port}`;
// Every step must end well within this: the proxy answers in milliseconds.
const STEP_MS = Number(process.env.CLIENT_STEP_MS || 20000);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function step(name, fn) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${STEP_MS} ms`)), STEP_MS);
    });
    try {
        await Promise.race([fn(), timeout]);
    } catch (err) {
        console.error(`not ok - ${name}: ${err && err.stack ? err.stack : err}`);
        process.exit(1);
    } finally {
        clearTimeout(timer);
    }
    console.log(`ok - ${name}`);
}

function ioredisClient(extra) {
    // enableReadyCheck: ioredis sends INFO and waits for loading:0 (or no
    // loading field) before the client is ready.
    return new Redis({ port, host: '127.0.0.1', enableReadyCheck: true, lazyConnect: true,
                       maxRetriesPerRequest: 1, ...extra });
}

async function ioredisSteps() {
    const r = ioredisClient();
    const other = ioredisClient();
    await step('ioredis: connect with ready check', async () => {
        await r.connect();
        await other.connect();
        assert.equal(r.status, 'ready');
        assert.equal(await r.ping(), 'PONG');
    });
    await step('ioredis: pipeline', async () => {
        const p = r.pipeline();
        for (let i = 0; i < 50; i++) p.set(`io:pipe:${i}`, String(i));
        for (let i = 0; i < 50; i++) p.get(`io:pipe:${i}`);
        const results = await p.exec();
        assert.equal(results.length, 100);
        for (let i = 0; i < 50; i++) {
            assert.deepEqual(results[i], [null, 'OK']);
            assert.deepEqual(results[50 + i], [null, String(i)]);
        }
        // MGET across shards, merged in key order
        assert.deepEqual(await r.mget('io:pipe:1', 'io:none', 'io:pipe:2'), ['1', null, '2']);
    });
    await step('ioredis: MULTI on one shard (hash tags)', async () => {
        await r.del('{io:user}:h');
        const res = await r.multi().set('{io:user}:a', '1').incr('{io:user}:a')
            .hset('{io:user}:h', 'f', 'v').hgetall('{io:user}:h').exec();
        assert.deepEqual(res, [[null, 'OK'], [null, 2], [null, 1], [null, { f: 'v' }]]);
    });
    await step('ioredis: EVALSHA via defineCommand', async () => {
        r.defineCommand('keyAndArg', { numberOfKeys: 1, lua: 'return {KEYS[1], ARGV[1]}' });
        // The first call finds no script (NOSCRIPT) and falls back to EVAL,
        // the second runs by EVALSHA.
        assert.deepEqual(await r.keyAndArg('io:script', 'x'), ['io:script', 'x']);
        assert.deepEqual(await r.keyAndArg('io:script', 'y'), ['io:script', 'y']);
        const sha = await r.script('LOAD', 'return {KEYS[1], ARGV[1]}');
        assert.deepEqual(await r.evalsha(sha, 1, 'io:other', 'z'), ['io:other', 'z']);
    });
    await step('ioredis: scanStream over every shard', async () => {
        const p = r.pipeline();
        for (let i = 0; i < 300; i++) p.set(`io:scan:${i}`, 'v');
        await p.exec();
        const seen = new Set();
        await new Promise((resolve, reject) => {
            const stream = r.scanStream({ match: 'io:scan:*', count: 50 });
            stream.on('data', (keys) => keys.forEach((k) => seen.add(k)));
            stream.on('end', resolve);
            stream.on('error', reject);
        });
        assert.equal(seen.size, 300);
    });
    await step('ioredis: BLPOP woken by another client', async () => {
        const blocker = ioredisClient();
        await blocker.connect();
        const popped = blocker.blpop('io:queue', 5);
        await sleep(100);
        await other.rpush('io:queue', 'job');
        assert.deepEqual(await popped, ['io:queue', 'job']);
        // and a timeout answers nil
        assert.equal(await blocker.blpop('io:queue', 0.2), null);
        blocker.disconnect();
    });
    await step('ioredis: pub/sub', async () => {
        const sub = ioredisClient();
        await sub.connect();
        const got = [];
        sub.on('message', (channel, message) => got.push(['message', channel, message]));
        sub.on('pmessage', (pattern, channel, message) => got.push(['pmessage', pattern, channel, message]));
        assert.equal(await sub.subscribe('io:ch1', 'io:ch2'), 2);
        assert.equal(await sub.psubscribe('io:p*'), 3);
        assert.equal(await other.publish('io:ch1', 'one'), 1);
        assert.equal(await other.publish('io:ch2', 'two'), 1);
        assert.equal(await other.publish('io:pat', 'three'), 1);
        for (let i = 0; i < 100 && got.length < 3; i++) await sleep(20);
        assert.deepEqual(got.sort(), [['message', 'io:ch1', 'one'], ['message', 'io:ch2', 'two'],
                                      ['pmessage', 'io:p*', 'io:pat', 'three']].sort());
        // (with no names, ioredis waits for a reply per name it knows of,
        // patterns included, and hangs even against Redis itself)
        await sub.unsubscribe('io:ch1', 'io:ch2');
        await sub.punsubscribe('io:p*');
        assert.equal(await sub.ping(), 'PONG');
        sub.disconnect();
    });
    r.disconnect();
    other.disconnect();
}

async function nodeRedis4Steps() {
    const c = redis4.createClient({ url });
    c.on('error', () => {});
    await step('node-redis 4: connect', async () => {
        await c.connect();
        assert.equal(await c.ping(), 'PONG');
    });
    await step('node-redis 4: commands, MULTI, pub/sub', async () => {
        await c.del('nr4:h');
        await c.set('nr4:k', 'v');
        assert.equal(await c.get('nr4:k'), 'v');
        await c.hSet('nr4:h', { a: '1', b: '2' });
        assert.deepEqual({ ...(await c.hGetAll('nr4:h')) }, { a: '1', b: '2' });
        const res = await c.multi().set('{nr4}:x', '1').incr('{nr4}:x').exec();
        assert.deepEqual(res, ['OK', 2]);
        const sub = c.duplicate();
        sub.on('error', () => {});
        await sub.connect();
        let got = null;
        await sub.subscribe('nr4:ch', (message) => { got = message; });
        await c.publish('nr4:ch', 'hi');
        for (let i = 0; i < 100 && got === null; i++) await sleep(20);
        assert.equal(got, 'hi');
        await sub.quit();
    });
    await c.quit();
}

async function nodeRedis5Resp3Steps() {
    const c = redis5.createClient({ url, RESP: 3 });
    c.on('error', () => {});
    await step('node-redis 5 RESP3: connect (HELLO 3)', async () => {
        await c.connect();
        assert.equal(await c.ping(), 'PONG');
        const hello = await c.sendCommand(['HELLO', '3']);
        // RESP3 maps come back as objects (or Maps, by type mapping)
        const proto = hello instanceof Map ? hello.get('proto') : hello.proto;
        assert.equal(proto, 3);
    });
    await step('node-redis 5 RESP3: maps, sets, doubles, nulls', async () => {
        await c.del('nr5:h', 'nr5:s', 'nr5:z');
        await c.hSet('nr5:h', { a: '1', b: '2' });
        assert.deepEqual({ ...(await c.hGetAll('nr5:h')) }, { a: '1', b: '2' });
        await c.sAdd('nr5:s', ['x', 'y']);
        assert.deepEqual([...(await c.sMembers('nr5:s'))].sort(), ['x', 'y']);
        await c.zAdd('nr5:z', { score: 1.5, value: 'm' });
        assert.equal(await c.zScore('nr5:z', 'm'), 1.5);
        assert.equal(await c.get('nr5:none'), null);
        assert.deepEqual(await c.mGet(['nr5:none', 'nr5:h2']), [null, null]);
        assert.equal(await c.exists(['nr5:h', 'nr5:s', 'nr5:none']), 2);
        const info = await c.info('server');
        assert.match(String(info), /redis_version:/);
    });
    await step('node-redis 5 RESP3: MULTI, BLPOP, pub/sub', async () => {
        const res = await c.multi().set('{nr5}:x', '1').incr('{nr5}:x').exec();
        assert.deepEqual(res, ['OK', 2]);
        const blocker = c.duplicate();
        blocker.on('error', () => {});
        await blocker.connect();
        const popped = blocker.blPop('nr5:q', 5);
        await sleep(100);
        await c.rPush('nr5:q', 'job');
        const got = await popped;
        assert.equal(got.key, 'nr5:q');
        assert.equal(got.element, 'job');
        await blocker.quit();
        const sub = c.duplicate();
        sub.on('error', () => {});
        await sub.connect();
        let message = null;
        await sub.subscribe('nr5:ch', (m) => { message = m; });
        // RESP3: the subscribed connection still runs commands
        await c.publish('nr5:ch', 'pushed');
        for (let i = 0; i < 100 && message === null; i++) await sleep(20);
        assert.equal(message, 'pushed');
        await sub.unsubscribe('nr5:ch');
        await sub.quit();
    });
    await c.quit();
}

(async () => {
    assert.ok(port > 0, 'RINGPROXY_PORT is not set');
    if (Redis) await ioredisSteps();
    if (redis4) await nodeRedis4Steps();
    if (redis5) await nodeRedis5Resp3Steps();
    console.log(`all client steps passed (${clients.join(', ')})`);
    process.exit(0);
})();
