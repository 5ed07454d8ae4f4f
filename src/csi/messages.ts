/**
 * Limits on the messages a Mount returns. A status message travels in the HTTP/2 trailers. With
 * trailers near 48 KiB the trailers never arrived: grpc-go reported "server closed the stream
 * without sending trailers", and the connection that other pods' mounts share was closed. So a
 * message names a bounded number of problems and is cut to `MAX_STATUS_MESSAGE_BYTES` at last.
 */

/** Largest status message in UTF-8 bytes, well under every gRPC trailer limit. */
export const MAX_STATUS_MESSAGE_BYTES = 4096;
/** Problems a message lists before it counts the rest. */
export const MAX_LISTED_PROBLEMS = 10;

/** Joins the first `max` problems with "; " and counts the rest: `a; b; and 3 more`. */
export function joinProblems(problems: readonly string[], max = MAX_LISTED_PROBLEMS): string {
  if (problems.length <= max) return problems.join("; ");
  return `${problems.slice(0, max).join("; ")}; and ${problems.length - max} more (see the provider's log)`;
}

/** Cuts `message` to at most `maxBytes` UTF-8 bytes at a character boundary, marking the cut with "...". */
export function capStatusMessage(message: string, maxBytes = MAX_STATUS_MESSAGE_BYTES): string {
  const encoder = new TextEncoder();
  if (encoder.encode(message).length <= maxBytes) return message;

  const suffix = " ... (cut; see the provider's log)";
  const budget = maxBytes - encoder.encode(suffix).length;
  // A UTF-16 code unit encodes to at most 3 bytes, so each step removes at least the excess.
  let cut = message.slice(0, budget);
  for (let excess = encoder.encode(cut).length - budget; excess > 0; excess = encoder.encode(cut).length - budget) {
    cut = cut.slice(0, cut.length - Math.ceil(excess / 3));
  }
  // A cut between the halves of a surrogate pair leaves a lone high surrogate: drop it.
  if (/[\uD800-\uDBFF]$/.test(cut)) cut = cut.slice(0, -1);
  return cut + suffix;
}
