/* log: leveled key=value lines on stderr (see log.h). */
#include "proxy/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum log_level log_level_cur = LOG_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *log_level_name(enum log_level lvl)
{
	return (unsigned)lvl < 4 ? level_names[lvl] : "unknown";
}

void log_set_level(enum log_level lvl)
{
	log_level_cur = lvl;
}

const char *log_quote(char *buf, size_t n, const char *s)
{
	size_t o = 0;

	if (n < 8) {
		if (n)
			buf[0] = '\0';
		return buf;
	}
	buf[o++] = '"';
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		char tmp[5];
		size_t len;

		if (c == '"' || c == '\\') {
			tmp[0] = '\\';
			tmp[1] = (char)c;
			len = 2;
		} else if (c < 0x20 || c >= 0x7f) {
			snprintf(tmp, sizeof(tmp), "\\x%02x", c);
			len = 4;
		} else {
			tmp[0] = (char)c;
			len = 1;
		}
		/* keep room for `..."` and the terminator */
		if (o + len + 5 > n) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(buf + o, tmp, len);
		o += len;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

void log_write(enum log_level lvl, const char *msg, const char *fmt, ...)
{
	char line[4096];
	char qmsg[512];
	struct timeval tv;
	struct tm tm;
	size_t off;
	int n;
	va_list ap;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s msg=%s",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     (int)(tv.tv_usec / 1000), log_level_name(lvl), log_quote(qmsg, sizeof(qmsg), msg));
	off = n < 0 ? 0 : (size_t)n;
	if (fmt && *fmt && off + 1 < sizeof(line)) {
		line[off++] = ' ';
		va_start(ap, fmt);
		n = vsnprintf(line + off, sizeof(line) - off, fmt, ap);
		va_end(ap);
		if (n > 0)
			off += (size_t)n;
	}
	if (off >= sizeof(line) - 1) {
		/* cut: mark it so a reader knows the line is incomplete */
		off = sizeof(line) - 5;
		memcpy(line + off, "...", 3);
		off += 3;
	}
	line[off++] = '\n';
	/* one write per line so concurrent writers (tests tailing stderr) never see halves */
	fwrite(line, 1, off, stderr);
	fflush(stderr);
}
