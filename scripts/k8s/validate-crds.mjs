// Validates Gateway API and Prometheus Operator objects against the JSON schemas that the
// @kubernetes-models packages publish (compiled from the projects' CRDs). Reads a JSON array
// of objects on stdin, prints one result per object. Run by scripts/k8s/check.py with the
// node_modules directory that scripts/k8s-check installed.
//
// The published schemas allow unknown fields (the API server prunes them), so a misspelt
// field would pass. As a strict mode, every field name of an object must be one that the
// package's schemas know (free-form maps such as labels and annotations excepted).
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2];
const packages = {
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const freeForm = new Set(["labels", "annotations", "matchLabels"]);
const knownNames = new Map();
function namesOf(pkg) {
  if (!knownNames.has(pkg)) {
    const names = new Set();
    for (const dir of [join(nodeModules, pkg, "_schemas"), join(nodeModules, "@kubernetes-models/apimachinery/_schemas")]) {
      for (const file of readdirSync(dir).filter((f) => f.endsWith(".js"))) {
        const code = readFileSync(join(dir, file), "utf8");
        for (const m of code.matchAll(/(?:\.|")([A-Za-z_$][\w$-]*)/g)) names.add(m[1]);
      }
    }
    knownNames.set(pkg, names);
  }
  return knownNames.get(pkg);
}
function unknownFields(value, names, path, out) {
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, names, `${path}/${i}`, out));
  } else if (value && typeof value === "object") {
    for (const [key, v] of Object.entries(value)) {
      if (!names.has(key)) out.push(`${path}/${key}: unknown field`);
      if (!freeForm.has(key)) unknownFields(v, names, `${path}/${key}`, out);
    }
  }
  return out;
}

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
  result.errors.push(...unknownFields(obj, namesOf(pkg), "", []));
  results.push(result);
}
process.stdout.write(JSON.stringify(results));
