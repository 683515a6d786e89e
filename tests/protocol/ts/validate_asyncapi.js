// The published AsyncAPI document against the AsyncAPI 3.0.0 specification's own JSON
// Schema (@asyncapi/specs), with ajv: node validate_asyncapi.js <asyncapi.json>
// Exits 1 and prints the errors when the document is not valid AsyncAPI 3.0.0.
"use strict";
const { readFileSync } = require("node:fs");
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const specs = require("@asyncapi/specs");

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate_asyncapi.js <asyncapi.json>");
  process.exit(2);
}
const document = JSON.parse(readFileSync(path, "utf8"));
const spec = specs.schemas[document.asyncapi];
if (!spec) {
  console.error(`validate_asyncapi: no specification schema for asyncapi ${document.asyncapi}`);
  process.exit(1);
}
// meta: false: the specification bundles its own copy of the draft-07 meta-schema.
const ajv = new Ajv({ allErrors: true, strict: false, meta: false, validateSchema: false });
addFormats(ajv);
const validate = ajv.compile(spec);
if (!validate(document)) {
  console.error(ajv.errorsText(validate.errors, { separator: "\n" }));
  process.exit(1);
}
console.log(`valid AsyncAPI ${document.asyncapi}`);
