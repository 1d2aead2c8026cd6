// Validates KEDA resources (ScaledObject, TriggerAuthentication) against KEDA's own CRD schemas,
// which kubernetes-validate does not have: the schemas come with the npm package
// @kubernetes-models/keda (installed by scripts/fetch-tools.sh into .tools/npm).
//
//   node scripts/validate-keda.mjs .tools/npm/node_modules deploy/k8s/keda-scaledobject.yaml
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, file] = process.argv.slice(2);
if (!modules || !file) {
  console.error("usage: node scripts/validate-keda.mjs NODE_MODULES_DIR FILE.yaml");
  process.exit(2);
}
const require = createRequire(join(resolve(modules), "noop.js"));
const yaml = require("js-yaml");
const keda = await import(
  pathToFileURL(join(resolve(modules), "@kubernetes-models/keda/keda.sh/v1alpha1/index.js")).href
);

let failed = 0;
let checked = 0;
for (const doc of yaml.safeLoadAll(readFileSync(file, "utf8"))) {
  if (!doc) continue;
  const Kind = keda[doc.kind];
  if (!doc.apiVersion?.startsWith("keda.sh/") || !Kind) continue;
  try {
    new Kind(doc).validate();
    checked += 1;
    console.log(`PASS ${doc.kind}/${doc.metadata?.name} against KEDA's ${doc.apiVersion} schema`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${doc.kind}/${doc.metadata?.name}: ${e.message}`);
  }
}
console.log(`${checked} passed, ${failed} failed`);
process.exit(failed > 0 || checked === 0 ? 1 : 0);
