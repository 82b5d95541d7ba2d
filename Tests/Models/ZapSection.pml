/*
 * ZapSection.pml -- the per-VMA shared zap section against writers that take a VMA exclusively
 * under the mmap read lock, over two mappings of one object.
 *
 * Abstracts (Swift sources of this repository):
 *   Sources/Shootdown/VMA/VMA.swift
 *       VMA.enterZapSection(nested:), leaveZapSection(), lockExclusively(),
 *       waitHoldingWriterLock(while:), unlockExclusively(), tryLockExclusively()
 *   Sources/Shootdown/AddressSpace/AddressSpace+VMAEdit.swift
 *       VMAEdit.touch(_:) (nested once the edit holds another VMA), touchExclusively(_:),
 *       finish() (leaves every touched VMA, in touch order)
 *   Sources/Shootdown/AddressSpace/AddressSpace+Advise.swift
 *       advise .remove (one edit: touch the VMA, then zapObjectMappings touches the object's
 *       other VMAs of the space, all held until finish), .dontNeed (one edit, one VMA here),
 *       .guardInstall (one edit per VMA: touchExclusively, change, finish, next VMA)
 *   Sources/Shootdown/AddressSpace/AddressSpace+Reap.swift (optional REAP: tryLockExclusively)
 *
 * What is modelled. Two VMAs, A and B, mapping the same object pages. Per VMA: writerLock (a
 * lock with no owner check), zappers, exclusiveWaiters, heldExclusively. Everything runs under
 * the mmap read lock, which is not modelled (nobody here takes it for writing). Processes:
 *   - RemoveA: MADV_REMOVE in A: enterZapSection(A); zapObjectMappings: enterZapSection(B,
 *     nested); finish: leave A, leave B;
 *   - RemoveB: the same with A and B swapped;
 *   - GuardAB: guard installation over A then B, one edit per VMA: lockExclusively(A),
 *     unlockExclusively(A), lockExclusively(B), unlockExclusively(B);
 *   - GuardB: guard installation over B alone;
 *   - optional (-DGUARD_A) GuardA: guard installation over A alone;
 *   - optional (-DDONTNEED) DontNeed: MADV_DONTNEED of A: enter A, leave A;
 *   - optional (-DREAP) Reap: OOM reap of A: tryLockExclusively(A), and if it got it,
 *     unlockExclusively(A).
 * The zaps themselves, beginWrite/endWrite and the sequence count are not modelled: what a
 * section's holder does inside never waits for another VMA here, except the nested entry.
 * Lock acquisition is one atomic step (test-and-set); every other statement is its own step.
 * The back-off waits of waitHoldingWriterLock (drop writerLock, back off, retake it, re-check)
 * are modelled as: drop writerLock, block until the condition is false (read without the lock),
 * retake writerLock, re-check. A wait whose condition can never become false is then a blocked
 * process instead of a spin, so a cycle of waits is a state with no successor: every process
 * runs to its closing brace when nothing is stuck, and spin's invalid-end-state check (safety
 * mode, no end labels) reports any state in which no process can move and some has not finished.
 * What the blocking guard drops are retakes of the lock that find the condition still true and
 * drop it again: they change nothing but delay others.
 *
 * Properties:
 *   (a) no deadlock: every process finishes (invalid end state otherwise);
 *   (b) mutual exclusion per VMA (assertions): a writer that sets heldExclusively finds no zap
 *       inside and no other exclusive holder; a zap that enters finds no exclusive holder.
 *       These two are the only steps that can make "heldExclusively while zappers > 0" or "two
 *       exclusive holders" true, so checking them checks the invariant in every state.
 * That a nested entry never waits for a waiting writer is how enterZapSection(nested:) is
 * written (the model copies it); MUTANT_NESTED_WAITS shows what it buys.
 *
 * Mutants (each must make spin report an error):
 *   MUTANT_NESTED_WAITS             nested entries also wait for waiting writers (the protocol
 *                                   before 2271cbf's second fix): RemoveA in A, RemoveB in B,
 *                                   GuardAB waiting on A, GuardB waiting on B; each remove's
 *                                   nested entry waits for the writer waiting on the other VMA,
 *                                   which waits for the other remove (invalid end state).
 *   MUTANT_GUARD_HOLDS_ACROSS_VMAS  GuardAB holds A exclusively until it has B (one edit over
 *                                   both, the protocol before the first fix): it waits for B's
 *                                   zappers holding A; RemoveB in B waits for A's writerLock in
 *                                   its nested entry (invalid end state).
 *   MUTANT_NO_WAIT_FOR_ZAPPERS      lockExclusively does not wait for the zaps inside: a writer
 *                                   holds a VMA exclusively while a zap is inside (assertion).
 *
 * Liveness variant STARVATION (not a mutant, not run by scripts/check-models; LTL with weak
 * fairness, i.e. pan without -DSAFETY, `./pan -a -f -N <claim>`): two threads punch holes in B
 * forever (enter B, nested-enter A, leave both), one guard installation waits on A. Claims:
 * waiterServed (a writer announced on A eventually holds it) and zapsDrain (once a writer is
 * announced on A, A's zappers eventually reach 0). Both are violated: nested entries do not
 * yield, so two overlapping punches keep zappers[A] >= 1 forever and no scheduler lets the
 * guard in. With STARVATION_PLAIN (the looping threads zap A alone, non-nested entries) both
 * hold.
 */

#define A 0
#define B 1

bit  wlock[2];                  /* writerLock */
byte zappers[2];                /* zaps inside the shared section; under writerLock */
byte waiters[2];                /* exclusiveWaiters; under writerLock */
bool held[2];                   /* heldExclusively; set and cleared by the holder */
byte holders[2];                /* ghost: exclusive holders */

inline lockW(v) { atomic { wlock[v] == 0 -> wlock[v] = 1 } }
inline unlockW(v) { wlock[v] = 0 }

/* enterZapSection(nested:) */
inline enter(v, nested) {
    lockW(v);
    if
#ifdef MUTANT_NESTED_WAITS
    :: waiters[v] > 0 ->
#else
    :: waiters[v] > 0 && !nested ->
#endif
        do                                            /* waitHoldingWriterLock */
        :: waiters[v] > 0 -> unlockW(v); (waiters[v] == 0); lockW(v)
        :: else -> break
        od
    :: else
    fi;
    assert(!held[v] && holders[v] == 0);              /* (b) */
    zappers[v]++;
    unlockW(v)
}

/* leaveZapSection() */
inline leave(v) {
    lockW(v);
    zappers[v]--;
    unlockW(v)
}

/* lockExclusively(): returns with writerLock held */
inline lockExcl(v) {
    lockW(v);
#ifndef MUTANT_NO_WAIT_FOR_ZAPPERS
    if
    :: zappers[v] > 0 ->
        waiters[v]++;
        do                                            /* waitHoldingWriterLock */
        :: zappers[v] > 0 -> unlockW(v); (zappers[v] == 0); lockW(v)
        :: else -> break
        od;
        waiters[v]--
    :: else
    fi;
#endif
    assert(zappers[v] == 0 && holders[v] == 0);       /* (b) */
    atomic { held[v] = true; holders[v]++ }
}

/* unlockExclusively() */
inline unlockExcl(v) {
    atomic { held[v] = false; holders[v]-- };
    unlockW(v)
}

/* MADV_REMOVE in `mine`: its edit touches `mine`, then zapObjectMappings touches `other`
 * (nested: the edit holds `mine`); finish leaves both in touch order. */
proctype Remove(byte mine, other)
{
    enter(mine, false);
    enter(other, true);
    leave(mine);
    leave(other)
}

/* guard installation over A then B (the walk's VMAs in address order) */
proctype GuardAB()
{
    lockExcl(A);
#ifdef MUTANT_GUARD_HOLDS_ACROSS_VMAS
    lockExcl(B);                                      /* one edit over both: A stays held */
    unlockExcl(A);
    unlockExcl(B)
#else
    unlockExcl(A);                                    /* A's edit finishes ... */
    lockExcl(B);                                      /* ... before B's edit takes B */
    unlockExcl(B)
#endif
}

/* guard installation over one VMA */
proctype Guard(byte v)
{
    lockExcl(v);
    unlockExcl(v)
}

#ifdef DONTNEED
proctype DontNeed(byte v)
{
    enter(v, false);
    leave(v)
}
#endif

#ifdef REAP
/* tryLockExclusively(): never waits */
proctype Reap(byte v)
{
    atomic {
        if
        :: wlock[v] == 0 -> wlock[v] = 1
        :: else -> goto done                          /* tryLock failed */
        fi
    };
    if
    :: zappers[v] == 0 ->
        assert(holders[v] == 0);                      /* (b) */
        atomic { held[v] = true; holders[v]++ };
        unlockExcl(v)
    :: else -> unlockW(v)
    fi;
done:
    skip
}
#endif

#ifndef STARVATION
init
{
    atomic {
        run Remove(A, B);
        run Remove(B, A);
        run GuardAB();
        run Guard(B);
#ifdef GUARD_A
        run Guard(A);
#endif
#ifdef DONTNEED
        run DontNeed(A);
#endif
#ifdef REAP
        run Reap(A);
#endif
    }
}
#else
/* Liveness variant (not run by scripts/check-models; needs a non-SAFETY pan, see README.md).
 * Two threads punch holes in B over and over (each: enter B, nested-enter A, leave both); one
 * guard installation over A. With STARVATION_PLAIN the looping threads are zaps of A alone
 * (non-nested entries) instead. Claim: once the guard is announced as waiting on A, it
 * eventually holds A. */
bool gotA;

proctype Punch()
{
    do
    :: true ->
#ifdef STARVATION_PLAIN
        enter(A, false);
        leave(A)
#else
        enter(B, false);
        enter(A, true);
        leave(B);
        leave(A)
#endif
    od
}

proctype GuardAStarved()
{
    lockExcl(A);
    gotA = true;
    unlockExcl(A)
}

ltl waiterServed { [] ((waiters[A] > 0) -> <> gotA) }
ltl zapsDrain { [] ((waiters[A] > 0) -> <> (zappers[A] == 0)) }

init
{
    atomic {
        run Punch();
        run Punch();
        run GuardAStarved()
    }
}
#endif
