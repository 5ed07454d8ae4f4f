/** ScaiVault's secret path rules: 1 to 10 segments of `a-z 0-9 - _`, at most 512 characters. */
export const MAX_PATH_LENGTH = 512;
export const MAX_PATH_SEGMENTS = 10;

/** Returns why `path` is not a valid ScaiVault secret path, or undefined when it is valid. */
export function secretPathProblem(path: string): string | undefined {
  if (path.length === 0) return "the path is empty";
  if (path.length > MAX_PATH_LENGTH) return `the path is ${path.length} characters long, the maximum is ${MAX_PATH_LENGTH}`;
  if (path.startsWith("/") || path.endsWith("/")) return "the path must not start or end with /";

  const bad = path.match(/[^a-z0-9\-_/]/);
  if (bad) return `the path contains "${bad[0]}", but only a-z, 0-9, -, _ and / are allowed`;

  const segments = path.split("/");
  if (segments.some((segment) => segment === "")) return "the path has an empty segment (//)";
  if (segments.length > MAX_PATH_SEGMENTS) return `the path has ${segments.length} segments, the maximum is ${MAX_PATH_SEGMENTS}`;
  return undefined;
}
