/**
 * Errors in the user's words. The one mapping from error codes to plain sentences is the service's catalogue
 * (domain/errors.ts ERROR_SENTENCES, served as /ui/error-codes.json); the API's own message follows in full.
 */

let sentences = {};

export async function loadErrorSentences() {
  try {
    const res = await fetch('/ui/error-codes.json', { cache: 'no-cache' });
    if (res.ok) sentences = Object.fromEntries(Object.entries(await res.json()).map(([code, v]) => [code, v.sentence]));
  } catch {
    // offline: the page still shows the API's message
  }
}

export const UNREACHABLE = 'The service cannot be reached right now; retrying.';

/** Whether the error means the service (or a dependency) is down, not that the request was wrong. */
export function isUnavailable(err) {
  return err?.status === 0 || err?.status === 503 || err?.code === 'SERVICE_UNAVAILABLE' || err?.code === 'TEMPORAL_UNAVAILABLE';
}

/** `{sentence, detail}`: the plain sentence for the code, and the API's full message (never cut). */
export function explain(err) {
  if (err?.status === 0) return { sentence: UNREACHABLE, detail: '' };
  const detail = typeof err?.describe === 'function' ? err.describe() : String(err?.message ?? err ?? '');
  const sentence = (err?.code && sentences[err.code]) || '';
  if (!sentence) return { sentence: detail, detail: '' };
  // A detail that says no more than the sentence is left out.
  return { sentence, detail: detail && detail !== sentence ? detail : '' };
}

/** One line: the sentence, then the detail. */
export function explainText(err) {
  const { sentence, detail } = explain(err);
  return detail ? `${sentence} ${detail}` : sentence;
}
