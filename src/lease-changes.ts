/**
 * Batching of credential changes: the lease manager reports each replaced credential file, and
 * the changes of one window reach the application as one reload request, so that several DYNAMIC
 * lines replaced at the same time cause one signal.
 */
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("leases");

/** Collects changed files and calls `notify` once per window. */
export class ChangeBatcher {
  readonly #files = new Set<string>();
  readonly #windowMs: number;
  readonly #notify: (files: string[]) => unknown;
  readonly #track: (promise: Promise<unknown>) => unknown;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  /** @param track receives each notification in flight, so that the owner can wait for it. */
  constructor(options: { windowMs: number; notify: (files: string[]) => unknown; track: (promise: Promise<unknown>) => unknown }) {
    this.#windowMs = options.windowMs;
    this.#notify = options.notify;
    this.#track = options.track;
  }

  /** Records that `file` has a new credential; the window starts with the first change. */
  add(file: string): void {
    if (this.#closed) return;
    this.#files.add(file);
    if (this.#timer !== undefined) return;

    this.#timer = setTimeout(() => this.#flush(), this.#windowMs);
  }

  /** Drops pending changes and ignores later ones: a stopping manager requests no reload. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#files.clear();
  }

  #flush(): void {
    this.#timer = undefined;
    const files = [...this.#files];
    this.#files.clear();

    const notification = Promise.resolve()
      .then(() => this.#notify(files))
      .catch((error) => log.warn("Cannot request a reload after new credentials", { files, ...errorFields(error) }));
    this.#track(notification);
  }
}
