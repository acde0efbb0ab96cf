import { Decloud } from './models';

/** `0x1234…abcd`: enough to tell workers apart in a narrow panel. */
export function shortAddress(address: string | null): string {
  if (!address) {
    return '';
  }
  return address.length > 12 ? `${address.slice(0, 6)}…${address.slice(-4)}` : address;
}

/** A status or event kind as words: `not_processed` -> `not processed`. */
export function label(value: string): string {
  return value.replace(/_/g, ' ');
}

/** Seconds as a short human duration: `0.4 s`, `42 s`, `3 min 05 s`, `2 h 03 min`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, seconds);
  if (s < 10) {
    return `${s.toFixed(1)} s`;
  }
  if (s < 60) {
    return `${Math.floor(s)} s`;
  }
  const minutes = Math.floor(s / 60);
  if (minutes < 60) {
    return `${minutes} min ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  }
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${String(minutes % 60).padStart(2, '0')} min`;
}

/**
 * How long the run took, or how long it has been going: the ledger's
 * duration once final, the time since submission while in flight.
 */
export function runTime(run: Decloud.IRun, now: number = Date.now()): string {
  if (run.duration_s !== null) {
    return formatDuration(run.duration_s);
  }
  if (run.final) {
    return '';
  }
  return formatDuration((now - Date.parse(run.submitted_at)) / 1000);
}

/** An exact decimal amount with its coin; the text is the server's, never re-rounded. */
export function formatAmount(amount: string, unit: string): string {
  return `${amount} ${unit}`;
}

/** A UTC instant in the reader's local time of day (and date when not today). */
export function formatTime(iso: string): string {
  const when = new Date(iso);
  const today = new Date();
  const time = when.toLocaleTimeString([], { hour12: false });
  return when.toDateString() === today.toDateString()
    ? time
    : `${when.toLocaleDateString()} ${time}`;
}
