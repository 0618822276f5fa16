"""itimer_pending.py: a real interval timer (every 50 ms) whose SIGALRM is pending: the
signal is blocked, so after its first expiry the kernel has not armed it again (getitimer
reads value 0, interval 0.05; zdtm's timers met this when dumped at that moment). Prints
"ready" and the timer; on SIGUSR1 unblocks SIGALRM, waits 0.6 s and prints how many
SIGALRMs came (the pending one, then the timer ticking again, so more than 2)."""
import signal, time
count = [0]
signal.signal(signal.SIGALRM, lambda *_: count.__setitem__(0, count[0] + 1))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGUSR1])
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
time.sleep(0.3)
print("ready", flush=True)
print("timer", signal.getitimer(signal.ITIMER_REAL), flush=True)
signal.sigwait([signal.SIGUSR1])
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])
t = time.monotonic()
while time.monotonic() - t < 0.6:
    time.sleep(0.01)
signal.setitimer(signal.ITIMER_REAL, 0)
print("ticks", count[0] > 2, flush=True)
