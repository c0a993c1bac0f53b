// The API reference at /docs: /openapi.json rendered as a page, grouped by tag, every
// operation with its parameters, request body, responses and status codes, then the schemas
// they name. No dependencies. Text from the document is set as text, never parsed as HTML;
// its `backticks` become <code>.

const METHODS = ["get", "post", "put", "patch", "delete"];
const AUTH = { apiKey: "API key", subscribeToken: "subscribe token" };

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
  return node;
}

function prose(text) {
  return String(text ?? "").split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
}

function anchor(method, path) {
  return `op-${method}-${path.replace(/[^A-Za-z0-9]+/g, "-")}`;
}

// -- schemas as short type descriptions ---------------------------------------------------

function typeOf(schema = {}) {
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return h("a", { href: `#schema-${name}` }, name);
  }
  const choices = schema.anyOf ?? schema.oneOf;
  if (choices) return choices.flatMap((choice, i) => [i ? " or " : "", typeOf(choice)]);
  if ("const" in schema) return `= ${JSON.stringify(schema.const)}`;
  if (schema.enum) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(" | ")}`;
  if (schema.type === "array") return ["array of ", typeOf(schema.items)];
  return [schema.type ?? "any", schema.format ? ` (${schema.format})` : ""].join("");
}

function limits(schema = {}) {
  const parts = [];
  const range = (low, high, unit) => {
    if (low !== undefined && high !== undefined) parts.push(`${low} to ${high}${unit}`);
    else if (low !== undefined) parts.push(`at least ${low}${unit}`);
    else if (high !== undefined) parts.push(`at most ${high}${unit}`);
  };
  range(schema.minimum, schema.maximum, "");
  range(schema.minLength, schema.maxLength, " characters");
  range(schema.minItems, schema.maxItems, " items");
  if ("default" in schema) parts.push(`default ${JSON.stringify(schema.default)}`);
  return parts.length ? h("div", { class: "type" }, parts.join("; ")) : null;
}

function typeCell(schema) {
  return h("td", {}, h("span", { class: "type" }, typeOf(schema)), limits(schema));
}

function propertiesTable(schema) {
  const required = new Set(schema.required ?? []);
  const rows = Object.entries(schema.properties ?? {}).map(([name, property]) =>
    h("tr", { "data-name": name },
      h("td", {}, h("code", {}, name), required.has(name) ? h("span", { class: "required" }, " required") : null),
      typeCell(property),
      h("td", {}, prose(property.description))));
  if (!rows.length) return null;
  return h("table", { class: "fields" }, h("tr", {}, h("th", {}, "field"), h("th", {}, "type"), h("th", {}, "description")), rows);
}

// -- operations ------------------------------------------------------------------------------

function auth(operation, spec) {
  const schemes = (operation.security ?? spec.security ?? []).flatMap(Object.keys);
  return schemes.length ? schemes.map((name) => AUTH[name] ?? name).join(" or ") : "no key";
}

function parameters(operation) {
  const list = operation.parameters ?? [];
  if (!list.length) return null;
  return [h("h3", {}, "Parameters"), h("table", { class: "parameters" },
    h("tr", {}, h("th", {}, "name"), h("th", {}, "in"), h("th", {}, "type"), h("th", {}, "description")),
    list.map((p) => h("tr", { class: "parameter", "data-name": p.name },
      h("td", {}, h("code", {}, p.name), p.required ? h("span", { class: "required" }, " required") : null),
      h("td", {}, p.in), typeCell(p.schema), h("td", {}, prose(p.description)))))];
}

function content(entry) {
  return Object.entries(entry?.content ?? {}).map(([type, media]) =>
    h("div", {}, h("span", { class: "type" }, type, ": "), typeOf(media.schema)));
}

function resolve(schema, spec) {
  const name = schema?.$ref?.split("/").pop();
  return name ? spec.components?.schemas?.[name] ?? {} : schema ?? {};
}

function requestBody(operation, spec) {
  const body = operation.requestBody;
  if (!body) return null;
  // The body's fields are shown here as well as under its schema: a reader of an operation
  // should not have to follow a link to learn what to send.
  const schemas = Object.values(body.content ?? {}).map((media) => resolve(media.schema, spec));
  return [h("h3", {}, "Request body", body.required ? h("span", { class: "required" }, " required") : null),
    h("div", { class: "request-body" }, content(body),
      schemas.map((s) => [h("p", {}, prose(s.description)), propertiesTable(s)]))];
}

function responses(operation) {
  const rows = Object.entries(operation.responses ?? {}).map(([status, response]) =>
    h("tr", { class: "response", "data-status": status },
      h("td", { class: `status s${status[0]}` }, status),
      h("td", {}, prose(response.description)),
      h("td", {}, content(response))));
  return [h("h3", {}, "Responses"), h("table", { class: "responses" },
    h("tr", {}, h("th", {}, "status"), h("th", {}, "meaning"), h("th", {}, "body")), rows)];
}

function operationSection(method, path, operation, spec) {
  return h("section", { class: "operation", id: anchor(method, path),
                        "data-operation": `${method.toUpperCase()} ${path}` },
    h("header", {}, h("span", { class: `method ${method}` }, method), h("span", { class: "path" }, path),
      h("span", { class: "auth" }, auth(operation, spec))),
    h("p", {}, prose(operation.summary)), operation.description ? h("p", {}, prose(operation.description)) : null,
    parameters(operation), requestBody(operation, spec), responses(operation));
}

function operationsByTag(spec) {
  const tags = new Map();
  for (const [path, item] of Object.entries(spec.paths ?? {})) {
    for (const method of METHODS.filter((m) => item[m])) {
      const tag = item[method].tags?.[0] ?? "other";
      if (!tags.has(tag)) tags.set(tag, []);
      tags.get(tag).push([method, path, item[method]]);
    }
  }
  return tags;
}

// -- the page --------------------------------------------------------------------------------

function render(spec) {
  const main = document.getElementById("reference");
  const nav = document.getElementById("nav");
  const info = spec.info ?? {};
  main.replaceChildren(h("h1", {}, info.title ?? "API"),
    h("p", { class: "type" }, `version ${info.version ?? "?"} · OpenAPI ${spec.openapi} · `,
      h("a", { href: "/openapi.json" }, "/openapi.json")),
    h("p", {}, prose(info.description)));
  nav.replaceChildren();
  for (const [tag, operations] of operationsByTag(spec)) {
    main.append(h("h2", { class: "tag", id: `tag-${tag}` }, tag));
    nav.append(h("h2", {}, tag));
    for (const [method, path, operation] of operations) {
      main.append(operationSection(method, path, operation, spec));
      nav.append(h("a", { href: `#${anchor(method, path)}` }, `${method.toUpperCase()} ${path}`));
    }
  }
  renderSchemas(spec, main, nav);
}

function renderSchemas(spec, main, nav) {
  const schemas = Object.entries(spec.components?.schemas ?? {});
  main.append(h("h2", { class: "tag", id: "schemas" }, "schemas"));
  nav.append(h("h2", {}, "schemas"));
  for (const [name, schema] of schemas) {
    main.append(h("section", { class: "schema", id: `schema-${name}`, "data-schema": name },
      h("h3", {}, name), h("p", {}, prose(schema.description)),
      propertiesTable(schema) ?? h("p", { class: "type" }, typeOf(schema))));
    nav.append(h("a", { href: `#schema-${name}` }, name));
  }
}

async function load() {
  const target = document.getElementById("reference");
  try {
    const response = await fetch("/openapi.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`/openapi.json answered ${response.status}`);
    render(await response.json());
    target.dataset.rendered = "true";
    if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
  } catch (problem) {
    target.replaceChildren(h("p", { class: "error" }, `The reference could not be read: ${problem.message}`));
  }
}

load();
