/*
 * log: leveled, one-line key=value logging to stderr.
 *
 * Each line is `ts=<rfc3339> level=<lvl> msg="<msg>" <pairs>`. The pairs come from a printf
 * format supplied by the caller; values that may hold spaces or quotes (selectors, tenant names,
 * error text) must go through log_quote() so every line stays machine-parsable and no client
 * input can forge a field or a line break.
 */
#ifndef PROMGUARD_LOG_H
#define PROMGUARD_LOG_H

#include <stddef.h>

enum log_level {
	LOG_DEBUG = 0,
	LOG_INFO = 1,
	LOG_WARN = 2,
	LOG_ERROR = 3,
};

/* The level in force; read by the macros below, so a disabled level costs one branch. */
extern enum log_level log_level_cur;

/* Parse "debug|info|warn|error" into <out>. Returns 0, or -EINVAL for anything else. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level lvl);
void log_set_level(enum log_level lvl);

/*
 * Write one line. <msg> is the human message (quoted by the logger); <fmt> builds the
 * key=value tail and may be "" for none. Lines longer than 4 KiB are cut with "..." marked.
 */
void log_write(enum log_level lvl, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Quote <s> for a log value into <buf> (size <n>): wraps it in double quotes and escapes
 * '"', '\\' and every byte outside printable ASCII as \xNN. Returns <buf>. Truncates with
 * "..." inside the quotes when <buf> is too small.
 */
const char *log_quote(char *buf, size_t n, const char *s);

#define log_debug(msg, ...) do { if (log_level_cur <= LOG_DEBUG) log_write(LOG_DEBUG, msg, __VA_ARGS__); } while (0)
#define log_info(msg, ...)  do { if (log_level_cur <= LOG_INFO)  log_write(LOG_INFO,  msg, __VA_ARGS__); } while (0)
#define log_warn(msg, ...)  do { if (log_level_cur <= LOG_WARN)  log_write(LOG_WARN,  msg, __VA_ARGS__); } while (0)
#define log_error(msg, ...) log_write(LOG_ERROR, msg, __VA_ARGS__)

#endif
