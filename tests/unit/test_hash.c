/* Hash functions and hash tags: published test vectors for every function
 * (libmemcached's tests/hash_results.h for the twemproxy-compatible ones,
 * which nutcracker's own tests also quote; RFC 1321 for MD5; the widely used
 * MurmurHash3_x86_32 seed-0 set), then the tag rules case by case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ring/hash.h"
#include "ring/md5.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef struct hash_vector {
    hash_kind kind;
    const char *key;
    size_t len; /* 0: strlen(key) */
    uint32_t expected;
} hash_vector;

/* Keys are binary: NUL bytes are hashed like any other byte, by length. */
static void test_embedded_nul(void **state)
{
    (void)state;
    for (int kind = 0; kind < HASH_KIND_COUNT; kind++) {
        if (kind == HASH_CRC32) {
            continue; /* 15 bits: collisions between short keys are possible */
        }
        uint32_t with_nul = hash_bytes((hash_kind)kind, "a\0b", 3);
        assert_int_not_equal(with_nul, hash_bytes((hash_kind)kind, "a", 1));
        assert_int_not_equal(with_nul, hash_bytes((hash_kind)kind, "ab", 2));
        assert_int_not_equal(with_nul, hash_bytes((hash_kind)kind, "a\0c", 3));
    }
}

/* libmemcached tests/hash_results.h: one row per key, one column per
 * function (md5, crc32, fnv1a_64, murmur). twemproxy's functions of these
 * names are libmemcached's. */
static const struct {
    const char *key;
    uint32_t md5, crc32, fnv1a_64, murmur;
} libmemcached_vectors[] = {
    {"apple", 3195025439U, 10542U, 1488911807U, 4142305122U},
    {"beat", 2556848621U, 22009U, 2500855813U, 734504955U},
    {"carrot", 3724893440U, 14526U, 1510099634U, 3802834688U},
    {"daikon", 3332385401U, 19510U, 1390325195U, 4076891445U},
    {"eggplant", 245758794U, 19432U, 3647689787U, 387802650U},
    {"flower", 2550894432U, 10199U, 3241528582U, 560515427U},
    {"green", 121710495U, 20634U, 1669328060U, 3274673488U},
    {"hide", 3053817768U, 9369U, 2604311949U, 3150339524U},
    {"ick", 1250994555U, 11511U, 734810122U, 1527441970U},
    {"jack", 1862072655U, 10362U, 1516407546U, 2728642900U},
    {"kick", 2631955953U, 7893U, 560948863U, 3613992239U},
    {"lime", 2951528551U, 31289U, 1767346780U, 2938419259U},
    {"mushrooms", 1451250070U, 11313U, 561034892U, 2321988328U},
    {"nectarine", 2820856945U, 9354U, 4156330026U, 1145154116U},
    {"orange", 2060845566U, 7621U, 3716417003U, 4038540960U},
    {"peach", 3646985608U, 30628U, 3475297030U, 2224541613U},
    {"quant", 2138080750U, 15218U, 1518272172U, 264013145U},
    {"ripen", 217675895U, 25967U, 227211583U, 3995512858U},
    {"strawberry", 2230934345U, 2695U, 3938128828U, 2400956718U},
    {"tang", 1234361223U, 9380U, 126112909U, 2346666219U},
    {"up", 3968582726U, 17300U, 3043416448U, 926327338U},
    {"volumne", 2455685270U, 28156U, 3131561933U, 442757446U},
    {"when", 1293568479U, 9192U, 1328739897U, 1770805201U},
    {"yellow", 199067604U, 20484U, 2455664041U, 560483147U},
    {"zip", 2042482093U, 16925U, 2272238452U, 3902279934U},
};

static void test_libmemcached_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(libmemcached_vectors); i++) {
        const char *key = libmemcached_vectors[i].key;
        size_t len = strlen(key);
        assert_int_equal(hash_bytes(HASH_MD5, key, len), libmemcached_vectors[i].md5);
        assert_int_equal(hash_bytes(HASH_CRC32, key, len), libmemcached_vectors[i].crc32);
        assert_int_equal(hash_bytes(HASH_FNV1A_64, key, len), libmemcached_vectors[i].fnv1a_64);
        assert_int_equal(hash_bytes(HASH_MURMUR, key, len), libmemcached_vectors[i].murmur);
    }
}

static const hash_vector other_vectors[] = {
    /* MurmurHash3_x86_32, seed 0. */
    {HASH_MURMUR3, "", 0, 0x00000000},
    {HASH_MURMUR3, "a", 0, 0x3c2569b2},
    {HASH_MURMUR3, "abc", 0, 0xb3dd93fa},
    {HASH_MURMUR3, "test", 0, 0xba6bd213},
    {HASH_MURMUR3, "hello", 0, 0x248bfa47},
    {HASH_MURMUR3, "hello, world", 0, 0x149bbb7f},
    {HASH_MURMUR3, "19 Jan 2038 at 3:14:07 AM", 0, 0xe31e8a70},
    {HASH_MURMUR3, "The quick brown fox jumps over the lazy dog", 0, 0x2e4ff723},
    {HASH_MURMUR3, "The quick brown fox jumps over the lazy dog.", 0, 0xd5c48bfc},
    /* crc32: the CRC-32 check values 0xcbf43926 ("123456789") and
     * 0x414fa339 (the fox), reduced to bits 16..30. */
    {HASH_CRC32, "123456789", 0, 0xcbf43926U >> 16 & 0x7fff},
    {HASH_CRC32, "The quick brown fox jumps over the lazy dog", 0, 0x414fa339U >> 16 & 0x7fff},
    {HASH_CRC32, "", 0, 0},
    /* md5: RFC 1321 digests, first 4 bytes read little-endian. */
    {HASH_MD5, "", 0, 0xd98c1dd4},    /* d41d8cd9... */
    {HASH_MD5, "abc", 0, 0x98500190}, /* 90015098... */
    /* fnv1a_64: an empty key is the offset basis; bytes >= 0x80 are
     * sign-extended before the xor: "\xff" is (0x84222325 ^ 0xffffffff) *
     * 0x1b3, not (0x84222325 ^ 0xff) * 0x1b3. nutcracker's placement of keys
     * with such bytes is checked in tests/integration. */
    {HASH_FNV1A_64, "", 0, 0x84222325},
    {HASH_FNV1A_64, "\xff", 0, (uint32_t)((0x84222325U ^ 0xffffffffU) * 0x1b3U)},
    {HASH_FNV1A_64, "\x80", 0, (uint32_t)((0x84222325U ^ 0xffffff80U) * 0x1b3U)},
    {HASH_FNV1A_64, "caf\xc3\xa9", 0, 3472276361U},
    /* murmur: an empty key gives 0 (seed 0xdeadbeef * 0). */
    {HASH_MURMUR, "", 0, 0},
};

static void test_other_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(other_vectors); i++) {
        const hash_vector *v = &other_vectors[i];
        size_t len = v->len ? v->len : strlen(v->key);
        uint32_t got = hash_bytes(v->kind, v->key, len);
        if (got != v->expected) {
            fail_msg("%s(\"%s\") = 0x%08x, expected 0x%08x", hash_name(v->kind), v->key, got,
                     v->expected);
        }
    }
}

/* RFC 1321 appendix A.5 test suite, plus lengths around the padding edge
 * (55, 56, 63, 64 bytes) checked against each other's prefixes. */
static const struct {
    const char *input;
    const char *digest_hex;
} md5_vectors[] = {
    {"", "d41d8cd98f00b204e9800998ecf8427e"},
    {"a", "0cc175b9c0f1b6a831c399e269772661"},
    {"abc", "900150983cd24fb0d6963f7d28e17f72"},
    {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
    {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
    {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
     "d174ab98d277d9f5a5611c2c9f419d9f"},
    {"1234567890123456789012345678901234567890123456789012345678901234567890123456789"
     "0",
     "57edf4a22be3c955ac49da2e2107b67a"},
};

static void digest_hex(const char *input, size_t len, char out[2 * MD5_DIGEST_LEN + 1])
{
    uint8_t digest[MD5_DIGEST_LEN];
    md5_digest(input, len, digest);
    for (int i = 0; i < MD5_DIGEST_LEN; i++) {
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    }
}

static void test_md5_rfc1321(void **state)
{
    (void)state;
    char hex[2 * MD5_DIGEST_LEN + 1];
    for (size_t i = 0; i < ARRAY_LEN(md5_vectors); i++) {
        digest_hex(md5_vectors[i].input, strlen(md5_vectors[i].input), hex);
        assert_string_equal(hex, md5_vectors[i].digest_hex);
    }
}

/* nutcracker's own tests: ketama_hash("server1-8", x) is the x-th
 * little-endian word of the MD5 of "server1-8". */
static void test_md5_ketama_words(void **state)
{
    (void)state;
    uint8_t d[MD5_DIGEST_LEN];
    md5_digest("server1-8", strlen("server1-8"), d);
    uint32_t word0 =
        (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
    uint32_t word3 =
        (uint32_t)d[12] | (uint32_t)d[13] << 8 | (uint32_t)d[14] << 16 | (uint32_t)d[15] << 24;
    assert_int_equal(word0, 3853726576U);
    assert_int_equal(word3, 2667054752U);
}

/* Inputs of 55..65 bytes cross the one-block / two-block padding boundary;
 * 63-, 64- and 65-byte inputs must each differ from their neighbours, and
 * hashing at a misaligned address must not change a digest. */
static void test_md5_lengths_and_alignment(void **state)
{
    (void)state;
    char buf[200];
    memset(buf, 'x', sizeof(buf));
    char prev[2 * MD5_DIGEST_LEN + 1] = "";
    for (size_t len = 50; len < 140; len++) {
        char hex[2 * MD5_DIGEST_LEN + 1], shifted[2 * MD5_DIGEST_LEN + 1];
        digest_hex(buf, len, hex);
        digest_hex(buf + 1, len, shifted);
        assert_string_equal(hex, shifted);
        assert_string_not_equal(hex, prev);
        strcpy(prev, hex);
    }
    /* 64 'a' bytes: one full block plus a block of padding alone. */
    char hex[2 * MD5_DIGEST_LEN + 1];
    memset(buf, 'a', 64);
    digest_hex(buf, 64, hex);
    assert_string_equal(hex, "014842d480b571495a4a0363793f7367");
}

static void test_hash_names(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        hash_kind kind;
    } names[] = {
        {"murmur3", HASH_MURMUR3}, {"fnv1a_64", HASH_FNV1A_64}, {"crc32", HASH_CRC32},
        {"md5", HASH_MD5},         {"murmur", HASH_MURMUR},
    };
    assert_int_equal(ARRAY_LEN(names), HASH_KIND_COUNT);
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        hash_kind kind = HASH_KIND_COUNT;
        assert_int_equal(hash_from_name(names[i].name, &kind), 0);
        assert_int_equal(kind, names[i].kind);
        assert_string_equal(hash_name(names[i].kind), names[i].name);
    }
    static const char *const unknown[] = {"",      "MURMUR3", "murmur3 ", "fnv1a_32",
                                          "crc16", "ketama",  "md"};
    for (size_t i = 0; i < ARRAY_LEN(unknown); i++) {
        hash_kind kind = HASH_MD5;
        assert_int_equal(hash_from_name(unknown[i], &kind), -1);
        assert_int_equal(kind, HASH_MD5);
    }
    assert_int_equal(hash_from_name(NULL, &(hash_kind){0}), -1);
    assert_string_equal(hash_name(HASH_KIND_COUNT), "?");
    assert_string_equal(hash_name((hash_kind)-1), "?");
}

typedef struct tag_case {
    const char *key;
    char open, close;
    const char *span; /* NULL: the whole key */
} tag_case;

static const tag_case tag_cases[] = {
    {"{user1000}.following", '{', '}', "user1000"},
    {"{user1000}.followers", '{', '}', "user1000"},
    {"foo{bar}", '{', '}', "bar"},
    {"foo{bar}{zap}", '{', '}', "bar"},  /* the first tag wins */
    {"foo{{bar}}zap", '{', '}', "{bar"}, /* open chars after the first are text */
    {"foo{}{bar}", '{', '}', NULL},      /* empty first tag: whole key, no retry */
    {"{}", '{', '}', NULL},
    {"{}abc", '{', '}', NULL},
    {"{", '{', '}', NULL},
    {"abc{", '{', '}', NULL},
    {"abc{def", '{', '}', NULL}, /* no close: whole key */
    {"}abc{", '{', '}', NULL},   /* close only before open */
    {"a}b{c}", '{', '}', "c"},
    {"{a}", '{', '}', "a"},
    {"plain", '{', '}', NULL},
    {"", '{', '}', NULL},
    {"{x}", '\0', '}', NULL}, /* tags disabled */
    {"a$b$c", '$', '$', "b"}, /* same char opens and closes */
    {"a$$c", '$', '$', NULL},
    {"user:[42]:name", '[', ']', "42"},
    {"{user}:[42]", '[', ']', "42"}, /* only the configured pair counts */
};

static void test_hash_tag_span(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(tag_cases); i++) {
        const tag_case *c = &tag_cases[i];
        size_t len = strlen(c->key);
        const char *span = NULL;
        size_t span_len = 0;
        hash_tag_span(c->key, len, c->open, c->close, &span, &span_len);
        if (c->span == NULL) {
            assert_ptr_equal(span, c->key);
            assert_int_equal(span_len, len);
        } else {
            assert_int_equal(span_len, strlen(c->span));
            assert_memory_equal(span, c->span, span_len);
            assert_true(span > c->key && span + span_len < c->key + len);
        }
    }
}

/* The span is bounded by len, not by a NUL: a tag closed only past len is
 * not a tag. */
static void test_hash_tag_respects_length(void **state)
{
    (void)state;
    const char *key = "ab{cd}ef";
    const char *span;
    size_t span_len;
    hash_tag_span(key, 5, '{', '}', &span, &span_len);
    assert_ptr_equal(span, key);
    assert_int_equal(span_len, 5);
    hash_tag_span(key, 6, '{', '}', &span, &span_len);
    assert_int_equal(span_len, 2);
    assert_memory_equal(span, "cd", 2);
}

static void test_hash_key(void **state)
{
    (void)state;
    for (int kind = 0; kind < HASH_KIND_COUNT; kind++) {
        /* Keys sharing a tag share a position. */
        const char *a = "{user1000}.following", *b = "{user1000}.followers";
        assert_int_equal(hash_key((hash_kind)kind, a, strlen(a), '{', '}'),
                         hash_key((hash_kind)kind, b, strlen(b), '{', '}'));
        assert_int_equal(hash_key((hash_kind)kind, a, strlen(a), '{', '}'),
                         hash_bytes((hash_kind)kind, "user1000", 8));
        /* Without tags, or with an empty tag, the whole key is hashed. */
        assert_int_equal(hash_key((hash_kind)kind, a, strlen(a), '\0', '\0'),
                         hash_bytes((hash_kind)kind, a, strlen(a)));
        assert_int_equal(hash_key((hash_kind)kind, "x{}y", 4, '{', '}'),
                         hash_bytes((hash_kind)kind, "x{}y", 4));
        /* nutcracker sends an empty key to hash 0 with every function. */
        assert_int_equal(hash_key((hash_kind)kind, "", 0, '{', '}'), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_libmemcached_vectors),
        cmocka_unit_test(test_other_vectors),
        cmocka_unit_test(test_embedded_nul),
        cmocka_unit_test(test_md5_rfc1321),
        cmocka_unit_test(test_md5_ketama_words),
        cmocka_unit_test(test_md5_lengths_and_alignment),
        cmocka_unit_test(test_hash_names),
        cmocka_unit_test(test_hash_tag_span),
        cmocka_unit_test(test_hash_tag_respects_length),
        cmocka_unit_test(test_hash_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
