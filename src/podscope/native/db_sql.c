/* SQL statements for the database engine: operation, table, sanitised text; prepared statements. */
#include "db.h"

#include <stdlib.h>

/* --- SQL statements (PostgreSQL and MySQL) ------------------------------------------------- */

/* The operation of a statement: its first keyword in capitals (SELECT, INSERT, BEGIN...), after
 * blanks, comments and opening parentheses. */
void sql_op(const char *s, size_t n, char *out, uint8_t *len)
{
	size_t i = 0;
	for (;;) {
		while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' ||
				 s[i] == '('))
			i++;
		if (i + 1 < n && s[i] == '-' && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
			continue;
		}
		if (i + 1 < n && s[i] == '/' && s[i + 1] == '*') {
			i += 2;
			while (i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'))
				i++;
			i += 2;
			continue;
		}
		break;
	}
	size_t k = 0;
	while (i < n && k < OP_MAX && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
		out[k++] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i++] - 32) : s[i++];
	*len = (uint8_t)k;
}

int sql_word_is(const char *w, size_t n, const char *want)
{
	size_t k = strlen(want);
	if (n != k)
		return 0;
	for (size_t i = 0; i < k; i++)
		if ((w[i] >= 'a' && w[i] <= 'z' ? w[i] - 32 : w[i]) != want[i])
			return 0;
	return 1;
}

/* The table a statement names first (OpenTelemetry's db.collection.name): SELECT and DELETE
 * ... FROM t, INSERT and REPLACE ... INTO t, UPDATE t. Quotes are dropped, a schema is kept
 * (`db`.`t`: db.t); a subquery, or a table past the bytes kept, gives none. */
void sql_collection(const char *s, size_t n, const char *op, uint8_t oplen, char *out,
		    uint8_t *len)
{
	const char *after;
	*len = 0;
	if (sql_word_is(op, oplen, "SELECT") || sql_word_is(op, oplen, "DELETE"))
		after = "FROM";
	else if (sql_word_is(op, oplen, "INSERT") || sql_word_is(op, oplen, "REPLACE"))
		after = "INTO";
	else if (sql_word_is(op, oplen, "UPDATE"))
		after = NULL; /* the table comes next */
	else
		return;
	int want = after == NULL, seen_op = 0;
	size_t i = 0;
	while (i < n) {
		char ch = s[i];
		if (ch == '-' && i + 1 < n && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
			continue;
		}
		if (ch == '/' && i + 1 < n && s[i + 1] == '*') {
			for (i += 2; i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'); i++)
				;
			i += 2;
			continue;
		}
		int word = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
		if (want && seen_op && (word || ch == '"' || ch == '`')) {
			size_t k = 0, j = i;
			while (j < n) { /* an identifier: parts, quoted or not, joined by dots */
				char q = s[j];
				if (q == '"' || q == '`') {
					for (j++; j < n && s[j] != q; j++)
						if (k < OP_MAX)
							out[k++] = s[j];
					j++;
				} else if ((q >= 'a' && q <= 'z') || (q >= 'A' && q <= 'Z') ||
					   (q >= '0' && q <= '9') || q == '_' || q == '$' || q == '.') {
					if (k < OP_MAX)
						out[k++] = q;
					j++;
				} else {
					break;
				}
			}
			if (j > n) /* a quote not closed within the bytes kept */
				return;
			if (!(word && !after && (sql_word_is(s + i, j - i, "ONLY") ||
						 sql_word_is(s + i, j - i, "IGNORE") ||
						 sql_word_is(s + i, j - i, "LOW_PRIORITY")))) {
				*len = (uint8_t)k;
				return;
			}
			i = j;
			continue;
		}
		if (word) {
			size_t j = i;
			while (j < n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
					 (s[j] >= '0' && s[j] <= '9') || s[j] == '_' || s[j] == '$'))
				j++;
			if (!seen_op)
				seen_op = 1; /* the operation's own keyword */
			else if (after && sql_word_is(s + i, j - i, after))
				want = 1;
			i = j;
			continue;
		}
		if (want && seen_op && ch == '(')
			return; /* a subquery */
		if (ch == '\'' || ch == '"' || ch == '`') { /* a literal or a quoted name, passed */
			for (i++; i < n && s[i] != ch; i++)
				if (s[i] == '\\')
					i++;
		}
		i++;
	}
}

/* A statement with its literal values replaced (OpenTelemetry's sanitised db.query.text): strings
 * and numbers become ?, a list of them one ?, comments go, blanks are one space; names, keywords
 * and placeholders ($1, ?) stay. Double quotes quote names in PostgreSQL and strings in MySQL,
 * where a backslash escapes within a string.
 * At most QUERY_MAX - 1 bytes, ending in "..." when cut. */
uint8_t sql_normalise(const char *s, size_t n, int mysql, char *out)
{
	size_t k = 0, i = 0;
	const size_t cap = QUERY_MAX - 4;
#define PUT(ch)                                                                                    \
	do {                                                                                       \
		if (k < cap)                                                                       \
			out[k++] = (ch);                                                           \
		else                                                                               \
			goto full;                                                                 \
	} while (0)
	while (i < n && s[i]) {
		char ch = s[i];
		if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
		    (ch == '-' && i + 1 < n && s[i + 1] == '-') ||
		    (ch == '/' && i + 1 < n && s[i + 1] == '*')) {
			if (ch == '-') {
				while (i < n && s[i] != '\n')
					i++;
			} else if (ch == '/') {
				for (i += 2; i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'); i++)
					;
				i += 2;
			} else {
				i++;
			}
			if (k && out[k - 1] != ' ')
				PUT(' ');
			continue;
		}
		int ident = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
			    ch == '$' || (unsigned char)ch >= 0x80;
		if (ident) { /* a name or keyword, digits and all */
			while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
					 (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '$' ||
					 (unsigned char)s[i] >= 0x80))
				PUT(s[i++]);
			continue;
		}
		int lit = ch == '\'' || (ch == '"' && mysql) ||
			  (ch >= '0' && ch <= '9') || (ch == '.' && i + 1 < n && s[i + 1] >= '0' &&
							 s[i + 1] <= '9');
		if (ch == '"' || ch == '`') {
			if (!lit) { /* a quoted name: as it is */
				PUT(s[i++]);
				while (i < n && s[i] != ch)
					PUT(s[i++]);
				if (i < n)
					PUT(s[i++]);
				continue;
			}
		}
		if (lit) {
			if (ch == '\'' || ch == '"') {
				for (i++; i < n; i++) {
					if (s[i] == '\\' && mysql) { /* MySQL escapes; SQL does not */
						i++;
					} else if (s[i] == ch) {
						if (i + 1 < n && s[i + 1] == ch)
							i++; /* '' inside */
						else
							break;
					}
				}
				i++;
			} else { /* a number: digits, a point, an exponent, hex */
				while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' ||
						 s[i] == 'x' || s[i] == 'X' ||
						 (s[i] >= 'a' && s[i] <= 'f') ||
						 (s[i] >= 'A' && s[i] <= 'F') ||
						 ((s[i] == '+' || s[i] == '-') &&
						  (s[i - 1] == 'e' || s[i - 1] == 'E'))))
					i++;
			}
			/* "?, ?" is one ?: a list of values says nothing its first does not */
			size_t t = k;
			while (t && out[t - 1] == ' ')
				t--;
			if (t && out[t - 1] == ',') {
				size_t u = t - 1;
				while (u && out[u - 1] == ' ')
					u--;
				if (u && out[u - 1] == '?') {
					k = u;
					continue;
				}
			}
			PUT('?');
			continue;
		}
		PUT(ch);
		i++;
	}
	while (k && out[k - 1] == ' ')
		k--;
	return (uint8_t)k;
full:
	memcpy(out + k, "...", 3);
	return (uint8_t)(k + 3);
#undef PUT
}

int records_on(const struct dbconn *c)
{
	return ((DbEngineObject *)c->engine)->recs != NULL;
}

/* A prepared statement's text (records only), owned by its slot. */
void stmt_query(struct pgstmt *st, const char *q, uint8_t len)
{
	free(st->query);
	st->query = NULL;
	st->query_len = 0;
	if (len && (st->query = malloc(len))) {
		memcpy(st->query, q, len);
		st->query_len = len;
	}
}

struct pgstmt *pg_stmt(struct dbconn *c, const char *name, size_t n, int make)
{
	if (!n || n > sizeof(c->stmts[0].name))
		return NULL; /* the unnamed statement is parsed again each time */
	for (uint32_t i = 0; i < PG_STMTS; i++)
		if (c->stmts[i].name_len == n && !memcmp(c->stmts[i].name, name, n))
			return &c->stmts[i];
	if (!make)
		return NULL;
	struct pgstmt *st = &c->stmts[c->stmt_next++ % PG_STMTS]; /* the oldest goes */
	memcpy(st->name, name, n);
	st->name_len = (uint8_t)n;
	st->op_len = st->coll_len = 0;
	stmt_query(st, NULL, 0);
	return st;
}
