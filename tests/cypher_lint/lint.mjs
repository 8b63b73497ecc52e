// Lint Cypher statements with Neo4j's own linter (@neo4j-cypher/language-support).
// stdin:  JSON object {name: cypher}
// stdout: JSON object {name: [{severity, message, line, column, endLine, endColumn, deprecated}]}
// Lines and columns are 1-based. Used by tests/test_cypher_lint.py.
import { readFileSync } from 'node:fs';
import {
  isNotParamError,
  lintCypherQuery,
  parseStatementsStrs,
} from '@neo4j-cypher/language-support';

const SEVERITY = { 1: 'error', 2: 'warning', 3: 'information', 4: 'hint' };
// No labels/relationshipTypes/propertyKeys/functions: the linter then skips every
// schema-based check, so what remains is Neo4j's parser and semantic analysis.
const DB_SCHEMA = { defaultLanguage: 'CYPHER 5' };

const statements = JSON.parse(readFileSync(0, 'utf8'));
const out = {};
for (const [name, query] of Object.entries(statements)) {
  // Statements are sent by a driver, so console commands (:param ...) are invalid.
  const { diagnostics } = lintCypherQuery(query, DB_SCHEMA, {
    consoleCommandsEnabled: false,
  });
  out[name] = diagnostics
    // Parameters are bound by the driver at run time, not declared in a schema.
    .filter(isNotParamError)
    .map((d) => ({
      severity: SEVERITY[d.severity] ?? String(d.severity),
      message: d.message,
      line: d.range.start.line + 1,
      column: d.range.start.character + 1,
      endLine: d.range.end.line + 1,
      endColumn: d.range.end.character + 1,
      deprecated: /deprecated|no longer supported/i.test(d.message) || Boolean(d.tags?.includes(2)),
    }));
  // A driver runs exactly one statement per call.
  if (parseStatementsStrs(query).filter((s) => s.trim()).length > 1) {
    out[name].push({
      severity: 'error', message: 'more than one statement', line: 1, column: 1,
      endLine: 1, endColumn: 1, deprecated: false,
    });
  }
}
process.stdout.write(JSON.stringify(out));
