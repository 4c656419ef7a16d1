// Validates Gateway API and Prometheus Operator objects against the JSON schemas that the
// @kubernetes-models packages publish (compiled from the projects' CRDs). Reads a JSON array
// of objects on stdin, prints one result per object. Run by scripts/k8s/check.py with the
// node_modules directory that scripts/k8s-check installed.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2];
const packages = {
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const pkg = packages[group];
  const result = { kind: obj.kind, name: obj.metadata?.name, schema: "", errors: [] };
  if (!pkg) {
    result.errors.push(`no schema package for ${obj.apiVersion}`);
    results.push(result);
    continue;
  }
  const pkgJson = JSON.parse(readFileSync(join(nodeModules, pkg, "package.json"), "utf8"));
  result.schema = `${pkg}@${pkgJson.version} ${obj.apiVersion} ${obj.kind}`;
  let mod;
  try {
    mod = await import(pathToFileURL(join(nodeModules, pkg, group, version, `${obj.kind}.js`)).href);
  } catch (err) {
    result.errors.push(`no schema for ${obj.apiVersion} ${obj.kind}`);
    results.push(result);
    continue;
  }
  try {
    new mod[obj.kind](obj).validate();
  } catch (err) {
    result.errors.push(err.message);
  }
  results.push(result);
}
process.stdout.write(JSON.stringify(results));
