/**
 * Path globs of subscriptions and of the dev config's access rules. `*` matches within one
 * segment (alone it is one whole segment), `**` as a whole segment matches zero or more segments,
 * and `?` matches one character other than `/`. So `a/**` matches `a` itself and everything below it.
 */

const GLOB_SEGMENT = /^[a-z0-9\-_*?]+$/;

/** Returns why `pattern` is not a valid path glob, or undefined when it is valid. */
export function globProblem(pattern: string): string | undefined {
  if (pattern.length === 0) return "the pattern is empty";
  if (pattern.length > 512) return `the pattern is ${pattern.length} characters long, the maximum is 512`;
  if (pattern.startsWith("/") || pattern.endsWith("/")) return "the pattern must not start or end with /";

  for (const segment of pattern.split("/")) {
    if (segment === "") return "the pattern has an empty segment (//)";
    if (!GLOB_SEGMENT.test(segment)) return `the segment "${segment}" may contain only a-z, 0-9, -, _, * and ?`;
    if (segment.includes("**") && segment !== "**") return `"**" must be a whole segment, found "${segment}"`;
  }
  return undefined;
}

/** Compiles `pattern` into a predicate on secret paths. The pattern must pass `globProblem`. */
export function compileGlob(pattern: string): (path: string) => boolean {
  const segments = pattern.split("/").map((segment) => (segment === "**" ? DEEP : segmentRegExp(segment)));

  return function matchesGlob(path: string): boolean {
    return matchSegments(segments, 0, path.split("/"), 0);
  };
}

/** Reports whether `path` matches `pattern`. */
export function matchGlob(pattern: string, path: string): boolean {
  return compileGlob(pattern)(path);
}

// ---------------------------------------------------------------------------------------------

const DEEP = Symbol("**");

type SegmentMatcher = RegExp | typeof DEEP;

function segmentRegExp(segment: string): RegExp {
  // Segment characters are a-z, 0-9, - and _, none of which is special in a RegExp.
  const source = segment.replaceAll("*", ".*").replaceAll("?", ".");
  return new RegExp(`^${source}$`);
}

function matchSegments(pattern: SegmentMatcher[], i: number, path: string[], j: number): boolean {
  if (i === pattern.length) return j === path.length;

  const matcher = pattern[i]!;
  if (matcher === DEEP) {
    // Try every split: `**` takes zero, one, ... of the remaining segments.
    for (let taken = j; taken <= path.length; taken += 1) {
      if (matchSegments(pattern, i + 1, path, taken)) return true;
    }
    return false;
  }

  if (j === path.length || !matcher.test(path[j]!)) return false;
  return matchSegments(pattern, i + 1, path, j + 1);
}
