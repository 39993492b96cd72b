// This file owns the check that every Options field has one path to the
// library: one entry in optionSetters, which calls its C setter. Inside the
// package, to reach the table; what each option does is tested from
// outside (setters_test.go, options_test.go).

package ocicache

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// setNonZero gives v, an Options field, a value that is not its zero value
// (so it is passed on, not left to the library's default).
func setNonZero(t *testing.T, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Int, reflect.Int64:
		v.SetInt(1)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		setNonZero(t, v.Index(0))
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			setNonZero(t, v.Field(i))
		}
	default:
		t.Fatalf("no non-zero value for a %s: extend setNonZero", v.Type())
	}
}

// Every Options field has exactly one entry in optionSetters, and that
// entry calls a C setter: given no builder (NULL), the setter itself
// refuses with OCI_E_INVALID_ARGUMENT, which only a call into C can return,
// and the error names the field and the setter. A zero field calls nothing.
func TestEveryOptionReachesItsSetter(t *testing.T) {
	fields := reflect.TypeOf(Options{})
	entries := map[string]int{}
	for _, o := range optionSetters {
		entries[o.field]++
	}
	for i := 0; i < fields.NumField(); i++ {
		name := fields.Field(i).Name
		if entries[name] != 1 {
			t.Errorf("Options.%s has %d entries in optionSetters, want 1", name, entries[name])
		}
		delete(entries, name)
	}
	for name := range entries {
		t.Errorf("optionSetters has an entry for %s, which is no Options field", name)
	}

	for _, o := range optionSetters {
		if err := o.apply(nil, &Options{}, o.setter); err != nil {
			t.Errorf("Options.%s unset: %v, want no setter called", o.field, err)
		}
		var opts Options
		setNonZero(t, reflect.ValueOf(&opts).Elem().FieldByName(o.field))
		err := o.apply(nil, &opts, o.setter)
		if !errors.Is(err, ErrInvalidArgument) ||
			!strings.Contains(err.Error(), "Options."+o.field+" ") || !strings.Contains(err.Error(), "("+o.setter+")") {
			t.Errorf("Options.%s set, no builder: %v, want the setter's OCI_E_INVALID_ARGUMENT naming Options.%s and %s", o.field, err, o.field, o.setter)
		}
	}
}
