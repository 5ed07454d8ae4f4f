/**
 * Renders Helm chart templates without the helm binary: the subset of Go's text/template and of
 * Helm's functions that deploy/helm/ uses. Actions with `{{-` and `-}}` trim whitespace. The
 * control structures are if/else if/else, with/else, range and define. `$` is the root context,
 * and a pipeline passes its value as the last argument of the next command. Functions: include, default, quote,
 * toYaml, indent, nindent, trunc, trimSuffix, printf (%s, %v, %d), required, eq, ne, not, and, or.
 * Anything else throws, naming the template and the action, so a template cannot silently use
 * more than this renderer checks.
 */
import { stringify } from "yaml";

/** The objects a chart's templates see. */
export interface ChartContext {
  Values: Record<string, unknown>;
  Release: { Name: string; Namespace: string; Service: string };
  Chart: Record<string, unknown>;
}

/** Renders every template of `templates` (file name to text) and returns the output by file name. */
export function renderChart(templates: Record<string, string>, context: ChartContext): Record<string, string> {
  const defines = new Map<string, Node[]>();
  const parsed = new Map<string, Node[]>();

  for (const [name, text] of Object.entries(templates)) parsed.set(name, parse(tokenize(text, name), name, defines));

  const output: Record<string, string> = {};
  for (const [name, nodes] of parsed) {
    if (name.startsWith("_")) continue;
    output[name] = evaluate(nodes, { dot: context, root: context, defines, template: name });
  }
  return output;
}

// ---------------------------------------------------------------------------------------------

type Token = { kind: "text"; text: string } | { kind: "action"; text: string };

type Node =
  | { kind: "text"; text: string }
  | { kind: "output"; pipeline: string }
  | { kind: "if" | "with"; branches: Array<{ condition: string | undefined; body: Node[] }> }
  | { kind: "range"; pipeline: string; body: Node[] };

interface Scope {
  dot: unknown;
  root: unknown;
  defines: Map<string, Node[]>;
  template: string;
}

function tokenize(text: string, template: string): Token[] {
  const tokens: Token[] = [];
  let rest = text;

  while (rest.length) {
    const open = rest.indexOf("{{");
    if (open === -1) {
      tokens.push({ kind: "text", text: rest });
      break;
    }

    const close = rest.indexOf("}}", open);
    if (close === -1) throw new Error(`${template}: unclosed action`);

    let before = rest.slice(0, open);
    let inner = rest.slice(open + 2, close);
    let after = rest.slice(close + 2);

    if (inner.startsWith("-")) {
      before = before.replace(/\s+$/, "");
      inner = inner.slice(1);
    }
    if (inner.endsWith("-")) {
      inner = inner.slice(0, -1);
      after = after.replace(/^\s+/, "");
    }

    if (before) tokens.push({ kind: "text", text: before });
    if (!/^\s*\/\*[\s\S]*\*\/\s*$/.test(inner)) tokens.push({ kind: "action", text: inner.trim() });
    rest = after;
  }
  return tokens;
}

function parse(tokens: Token[], template: string, defines: Map<string, Node[]>): Node[] {
  let index = 0;

  function block(stopAt: string[]): { nodes: Node[]; stop: string } {
    const nodes: Node[] = [];
    while (index < tokens.length) {
      const token = tokens[index++]!;
      if (token.kind === "text") {
        nodes.push({ kind: "text", text: token.text });
        continue;
      }

      const [keyword] = token.text.split(/\s+/, 1);
      if (stopAt.includes(keyword!) || (keyword === "else" && stopAt.includes("else"))) return { nodes, stop: token.text };

      if (keyword === "if" || keyword === "with") nodes.push(conditional(keyword, token.text.slice(keyword.length).trim()));
      else if (keyword === "range") {
        const body = block(["end"]);
        nodes.push({ kind: "range", pipeline: token.text.slice(5).trim(), body: body.nodes });
      } else if (keyword === "define") {
        const name = /^define\s+"([^"]+)"$/.exec(token.text)?.[1];
        if (!name) throw new Error(`${template}: cannot parse {{ ${token.text} }}`);
        defines.set(name, block(["end"]).nodes);
      } else if (keyword === "end" || keyword === "else") throw new Error(`${template}: unexpected {{ ${token.text} }}`);
      else nodes.push({ kind: "output", pipeline: token.text });
    }
    if (stopAt.length) throw new Error(`${template}: missing {{ end }}`);
    return { nodes, stop: "" };
  }

  function conditional(kind: "if" | "with", condition: string): Node {
    const branches: Array<{ condition: string | undefined; body: Node[] }> = [];
    let current: string | undefined = condition;

    for (;;) {
      const { nodes, stop } = block(["end", "else"]);
      branches.push({ condition: current, body: nodes });
      if (stop === "end") return { kind, branches };

      const elseIf = /^else\s+if\s+(.+)$/.exec(stop);
      current = elseIf ? elseIf[1] : undefined;
      if (!elseIf && stop !== "else") throw new Error(`${template}: cannot parse {{ ${stop} }}`);
    }
  }

  return block([]).nodes;
}

function evaluate(nodes: Node[], scope: Scope): string {
  let out = "";
  for (const node of nodes) {
    if (node.kind === "text") out += node.text;
    else if (node.kind === "output") out += format(run(node.pipeline, scope));
    else if (node.kind === "range") {
      const value = run(node.pipeline, scope);
      let items: unknown[] = [];
      if (Array.isArray(value)) items = value;
      else if (value && typeof value === "object") items = Object.values(value);
      for (const item of items) out += evaluate(node.body, { ...scope, dot: item });
    } else {
      for (const branch of node.branches) {
        const value = branch.condition === undefined ? true : run(branch.condition, scope);
        if (!truthy(value)) continue;
        out += evaluate(branch.body, node.kind === "with" && branch.condition !== undefined ? { ...scope, dot: value } : scope);
        break;
      }
    }
  }
  return out;
}

/** Evaluates a pipeline: commands joined by `|`, each result passed as the next one's last argument. */
function run(pipeline: string, scope: Scope): unknown {
  const commands = splitTop(pipeline, "|");
  let value: unknown;
  commands.forEach((command, position) => {
    const words = splitTop(command.trim(), " ").filter(Boolean);
    const args = position === 0 ? [] : [value];
    value = call(words, args, scope, pipeline);
  });
  return value;
}

function call(words: string[], piped: unknown[], scope: Scope, source: string): unknown {
  const [head, ...rest] = words;
  if (head === undefined) throw new Error(`${scope.template}: empty command in {{ ${source} }}`);

  const args = [...rest.map((word) => operand(word, scope, source)), ...piped];
  if (!(head in FUNCTIONS)) {
    if (args.length) throw new Error(`${scope.template}: unknown function "${head}" in {{ ${source} }}`);
    return operand(head, scope, source);
  }
  return FUNCTIONS[head]!(args, scope);
}

function operand(word: string, scope: Scope, source: string): unknown {
  if (word.startsWith("(") && word.endsWith(")")) return run(word.slice(1, -1), scope);
  if (word.startsWith('"')) return JSON.parse(word);
  if (/^-?\d+(\.\d+)?$/.test(word)) return Number(word);
  if (word === "true" || word === "false") return word === "true";
  if (word === "nil") return undefined;
  if (word === ".") return scope.dot;
  if (word === "$") return scope.root;
  if (word.startsWith(".") || word.startsWith("$.")) {
    const start = word.startsWith("$") ? scope.root : scope.dot;
    return word
      .replace(/^\$/, "")
      .slice(1)
      .split(".")
      .reduce<unknown>((value, key) => (value && typeof value === "object" ? (value as Record<string, unknown>)[key] : undefined), start);
  }
  throw new Error(`${scope.template}: cannot evaluate "${word}" in {{ ${source} }}`);
}

const FUNCTIONS: Record<string, (args: unknown[], scope: Scope) => unknown> = {
  include([name, dot], scope) {
    const body = scope.defines.get(String(name));
    if (!body) throw new Error(`${scope.template}: no template "${name}" is defined`);
    return evaluate(body, { ...scope, dot });
  },
  default: ([fallback, value]) => (truthy(value) ? value : fallback),
  quote: ([value]) => JSON.stringify(value === undefined ? "" : String(value)),
  toYaml: ([value]) => (value === undefined ? "" : stringify(value).replace(/\n$/, "")),
  indent: ([width, text]) => indentLines(String(text), Number(width)),
  nindent: ([width, text]) => "\n" + indentLines(String(text), Number(width)),
  trunc: ([length, text]) => String(text).slice(0, Number(length)),
  trimSuffix: ([suffix, text]) => (String(text).endsWith(String(suffix)) ? String(text).slice(0, -String(suffix).length) : String(text)),
  printf: ([pattern, ...values]) => {
    let index = 0;
    return String(pattern).replace(/%[svd]/g, () => format(values[index++]));
  },
  required: ([message, value]) => {
    if (!truthy(value)) throw new Error(String(message));
    return value;
  },
  eq: ([a, b]) => a === b,
  ne: ([a, b]) => a !== b,
  not: ([value]) => !truthy(value),
  and: (args) => args.every(truthy),
  or: (args) => args.find(truthy) ?? args[args.length - 1],
};

/** Go's template truth: false, 0, nil, and empty strings, lists and maps are false. */
function truthy(value: unknown): boolean {
  if (value === undefined || value === null || value === false || value === 0 || value === "") return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

function format(value: unknown): string {
  if (value === undefined || value === null) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function indentLines(text: string, width: number): string {
  const pad = " ".repeat(width);
  return text
    .split("\n")
    .map((line) => pad + line)
    .join("\n");
}

/** Splits on `separator` outside quotes and parentheses. */
function splitTop(text: string, separator: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quoted = false;
  let current = "";

  for (let index = 0; index < text.length; index++) {
    const char = text[index]!;
    if (char === '"' && text[index - 1] !== "\\") quoted = !quoted;
    else if (!quoted && char === "(") depth += 1;
    else if (!quoted && char === ")") depth -= 1;

    if (!quoted && depth === 0 && char === separator) {
      parts.push(current);
      current = "";
    } else current += char;
  }
  parts.push(current);
  return parts;
}
