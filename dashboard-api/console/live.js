// The event stream (GET /v1/events): one EventSource for the whole console; the page on screen
// hears every event and takes what concerns it.

const KINDS = ['connected', 'disconnected', 'refused', 'enrolled', 'renewed', 'revoked', 'suspended', 'resumed', 'ca_changed'];

let source = null;
const listeners = new Set();
let showState = () => {};

/** `onState` hears 'live', 'reconnecting' or 'off' (the stream is not served, or the session ended). */
export function startLive(onState) {
  stopLive();
  showState = onState;
  showState('connecting');
  source = new EventSource('/v1/events');
  source.addEventListener('open', () => showState('live'));
  source.addEventListener('error', () => showState(source?.readyState === EventSource.CLOSED ? 'off' : 'reconnecting'));
  for (const kind of KINDS) {
    source.addEventListener(kind, (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      for (const listener of listeners) listener(event);
    });
  }
}

export function stopLive() {
  source?.close();
  source = null;
}

/** Listens until the returned function is called (when the page is left). */
export function onEvent(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Calls `fn` once after a quiet moment, however many events asked for it: a burst of connects costs one refresh. */
export function debounce(fn, ms = 500) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}
