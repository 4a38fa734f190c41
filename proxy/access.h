/* Who may run what: the [users] of proxy.ini compiled against the command
 * table (a permission bit per command row), the check the router makes
 * before routing a request, AUTH, and the ACL commands. */
#ifndef PROXY_ACCESS_H
#define PROXY_ACCESS_H

#include <stddef.h>

#include "config/config.h"
#include "proxy/command.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Every user of one config, compiled; srv.access is the running set. */
typedef struct access_set access_set;

/* A user compiled: what a session points at once authenticated. */
typedef struct access_user access_user;

/* Compiles cfg's users (and the default user when [users] does not name it:
 * `on nopass ~* &* +@all`, or with requirepass as its password). NULL with
 * "proxy.ini:12: user alice: unknown command 'foo'" in err when a rule
 * names a command the table does not know. */
__attribute__((warn_unused_result)) access_set *access_build(const config *cfg, char *err,
                                                             size_t errlen);

void access_free(access_set *a);

/* Makes a the running set (taking it): every session moves to the new user
 * of the same name; a session whose user is gone or off is closed, with
 * the reason logged, as Redis closes them on ACL changes. The old set is
 * freed. */
void access_commit(access_set *a);

/* A new connection's user: the default user when it is on and needs no
 * password, else none (the client must AUTH). */
void access_session_start(session *sess);

/* RESET: the session back to a new connection's user. */
void access_session_reset(session *sess);

/* The session's user name for CLIENT LIST ("default" before AUTH, as
 * Redis shows it). */
const char *access_user_name(const session *sess);

/* The router's gate, called for a request whose session is not
 * sess->unrestricted: NOAUTH before AUTH, NOPERM for a command, key or
 * channel the user may not use (Redis 7.0's texts). Returns 0 to route the
 * request, -1 when it has been answered with the error. */
__attribute__((warn_unused_result)) int access_check(request *req, const command *cmd, size_t argc,
                                                     const resp_arg *argv);

/* AUTH [user] password (user NULL: default). 0 and the session is the
 * user's, or -1 after answering WRONGPASS (or Redis's error for AUTH
 * without a user when the default user has no password). */
__attribute__((warn_unused_result)) int access_auth(request *req, const resp_arg *user,
                                                    const resp_arg *password);

/* ACL WHOAMI, LIST, USERS, CAT, GENPASS, DRYRUN; the subcommands that would
 * change users are refused with a reason. */
void access_acl_command(request *req, const command *cmd, size_t argc, const resp_arg *argv);

#endif
