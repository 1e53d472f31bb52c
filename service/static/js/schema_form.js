// A form generated from a JSON schema of the OpenAPI document (the body of POST /train): each
// property becomes a field with its description; a property whose default is null shows "auto".

import {h} from "./dom.js";

function resolve(schema, components) {
  if (schema && schema.$ref) return resolve(components[schema.$ref.split("/").pop()], components);
  return schema || {};
}

/** The non-null alternative of `anyOf: [X, {type: "null"}]`, resolved. */
function concrete(property, components) {
  const options = (property.anyOf || [property]).map((option) => resolve(option, components));
  return options.find((option) => option.type !== "null") || {};
}

function describeLimits(type) {
  const limits = [];
  if (type.minimum !== undefined) limits.push(`≥ ${type.minimum}`);
  if (type.exclusiveMinimum !== undefined) limits.push(`> ${type.exclusiveMinimum}`);
  if (type.maximum !== undefined) limits.push(`≤ ${type.maximum}`);
  if (type.exclusiveMaximum !== undefined) limits.push(`< ${type.exclusiveMaximum}`);
  if (type.pattern) limits.push(`pattern ${type.pattern}`);
  return limits.join(", ");
}

function fieldFor(name, property, components) {
  const type = concrete(property, components);
  const auto = property.default === null || property.default === undefined;
  const shown = auto ? "" : String(property.default);
  let input;
  if (type.enum) {
    input = h("select", {name},
      auto ? h("option", {value: ""}, "auto") : null,
      type.enum.map((value) => h("option", {value, selected: String(value) === shown}, String(value))));
  } else if (type.type === "integer" || type.type === "number") {
    input = h("input", {type: "number", name, placeholder: auto ? "auto" : shown, value: auto ? null : shown,
                        step: type.type === "integer" ? 1 : "any",
                        min: type.minimum ?? type.exclusiveMinimum, max: type.maximum ?? type.exclusiveMaximum});
  } else if (type.type === "boolean") {
    input = h("select", {name}, h("option", {value: ""}, "auto"), h("option", {value: "true"}, "true"),
              h("option", {value: "false"}, "false"));
  } else {
    input = h("input", {type: "text", name, placeholder: auto ? "auto" : shown, value: auto ? null : shown});
  }
  input.dataset.kind = type.type === "array" ? "array" : type.type || "string";
  const help = [property.description || type.description, describeLimits(type),
                type.type === "array" ? "comma-separated" : ""].filter(Boolean).join("; ");
  return h("label", {class: "schema-field"}, h("span", {class: "name"}, name), input,
           h("small", {class: "help"}, help || (auto ? "auto: chosen from the data" : "")));
}

/** `{node, values()}`: the fields of `schema`; values() holds only the fields the user set. */
export function schemaForm(schema, components) {
  const properties = resolve(schema, components).properties || {};
  const fields = Object.entries(properties).map(([name, property]) => fieldFor(name, property, components));
  const node = h("div", {class: "schema-form"}, fields);
  return {
    node,
    values() {
      const values = {};
      for (const input of node.querySelectorAll("input, select")) {
        const text = input.value.trim();
        if (text === "") continue;
        const kind = input.dataset.kind;
        if (kind === "integer" || kind === "number") values[input.name] = Number(text);
        else if (kind === "boolean") values[input.name] = text === "true";
        else if (kind === "array") values[input.name] = text.split(",").map((part) => part.trim()).filter(Boolean);
        else values[input.name] = text;
      }
      return values;
    },
  };
}

/** The JSON schema of an operation's request body in an OpenAPI document. */
export function requestSchema(openapi, path, method) {
  const content = openapi.paths[path][method].requestBody.content["application/json"];
  return resolve(content.schema.anyOf ? content.schema.anyOf.find((s) => s.$ref) : content.schema,
                 openapi.components.schemas);
}
